"""The Conv-4 backbone of MAML / CML (paper §2, official ``maml/model_cml.py``)."""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from cmlearn.models.cooperative import BodyHead

BN_MODES = ("transductive", "running")


def conv_block(cin: int, cout: int, pool: bool, bn: str) -> nn.Sequential:
    """3×3 conv → BatchNorm → ReLU (→ 2×2 max-pool).

    ``bn="transductive"`` normalises every forward pass with its own batch statistics (the
    paper's and every reference implementation's behaviour); ``"running"`` tracks running
    statistics and uses them in ``eval()`` mode.
    """
    if bn not in BN_MODES:
        raise ValueError(f"unknown BatchNorm mode {bn!r}; choose from {BN_MODES}")
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, 3, padding=1),
        nn.BatchNorm2d(cout, track_running_stats=bn == "running"),
        nn.ReLU(),
    ]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class ConvNet(BodyHead):
    """``blocks`` conv blocks; the last has no pool, which moves into the head (as in the code).

    Body children are ``conv1 … convN``; the default co-learner point is the last conv map.
    """

    def __init__(
        self,
        in_channels: int,
        n_way: int,
        image_size: int,
        channels: int = 64,
        blocks: int = 4,
        bn: str = "transductive",
    ) -> None:
        body = OrderedDict(
            (
                f"conv{i + 1}",
                conv_block(in_channels if i == 0 else channels, channels, i < blocks - 1, bn),
            )
            for i in range(blocks)
        )
        side = image_size // 2**blocks  # the last pool sits in the head
        head = nn.Sequential(
            nn.MaxPool2d(2), nn.Flatten(), nn.Linear(channels * side * side, n_way)
        )
        super().__init__(nn.Sequential(body), head)
