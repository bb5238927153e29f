"""ResNet-12 (Oreshkin et al. 2018, as MetaOptNet and BOIL build it) as a body and a head.

Four residual blocks; each is 3 × (3×3 conv without bias → BatchNorm → LeakyReLU 0.1), with no
activation after the third BatchNorm, plus a 1×1 conv (no bias) → BatchNorm shortcut; the sum
goes through LeakyReLU 0.1 and a 2×2 max-pool, then DropBlock (off by default). The body is
the four blocks, so a co-learner reads the last block's map (640×5×5 at 84 px, 640×2×2 at
32 px); the head θ is global average pool → flatten → linear, as in MetaOptNet.

Widths default to 64-160-320-640, the usual few-shot ResNet-12 (TADAM, MetaOptNet) and the
one the CML paper's Table 9 names; BOIL's code uses 64-128-256-512 (``widths=64,128,256,512``).

Every parameter, the shortcut's included, is an ordinary body parameter (``model.body.*``)
that the inner loop adapts. BOIL's code calls the shortcut without its fast weights, so there
the shortcut is never adapted (and a second inner step crashes); we do not copy that quirk.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cmlearn.core.models.conv import conv_k_fc
from cmlearn.core.models.cooperative import BodyHead
from cmlearn.core.models.layers import BN_MODES, Conv2d, norm
from cmlearn.core.registry import MODELS, check

if TYPE_CHECKING:
    from cmlearn.core.tasks.batch import TaskSource

SLOPE = 0.1  # LeakyReLU negative slope of every ResNet-12 activation
WIDTHS = (64, 160, 320, 640)


def init_weights(module: nn.Module) -> None:
    """MetaOptNet's (and BOIL's) initialisation: Kaiming-normal convs (fan_out, the
    ``leaky_relu`` gain with its default slope 0, as they call it), BatchNorm γ = 1, β = 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="leaky_relu")
        elif isinstance(m, nn.BatchNorm2d) or getattr(m, "per_step", False):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class DropBlock(nn.Module):
    """DropBlock (Ghiasi et al. 2018): zero whole ``block_size``² squares of a feature map.

    Active only in training mode with ``rate > 0``; otherwise the identity. Block seeds are
    drawn, like ``F.dropout``'s, from torch's default generator of the input's device (which
    ``torch.manual_seed`` seeds, so a seeded run repeats) at the positions where a
    block fits inside the map, each with probability γ = rate / b² · HW / ((H−b+1)(W−b+1)),
    which makes ``rate`` the expected dropped fraction up to overlaps. The kept activations are
    scaled by (all / kept) so the map's sum is unchanged on average. The block is clamped to
    the map (b ≤ H, W): at 32 px ResNet-12's maps shrink to 2×2. Unlike MetaOptNet/BOIL the
    rate is constant, not ramped up over the first 40,000 forward passes.
    """

    def __init__(self, rate: float = 0.0, block_size: int = 5) -> None:
        super().__init__()
        self.rate = rate
        self.block_size = block_size

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.rate == 0.0:
            return x
        n, c, h, w = x.shape
        b = min(self.block_size, h, w)
        gamma = self.rate / b**2 * (h * w) / ((h - b + 1) * (w - b + 1))
        seeds = torch.bernoulli(x.new_full((n, c, h - b + 1, w - b + 1), min(gamma, 1.0)))
        # a seed at (i, j) drops the square [i, i + b) × [j, j + b): a b×b max over the seeds
        # padded by b − 1 on every side spreads each seed down and right
        dropped = F.max_pool2d(F.pad(seeds, (b - 1,) * 4), b, stride=1)
        keep = 1.0 - dropped
        return x * keep * (keep.numel() / keep.sum().clamp_min(1.0))

    def extra_repr(self) -> str:
        return f"rate={self.rate}, block_size={self.block_size}"


def conv3x3(cin: int, cout: int) -> nn.Conv2d:
    return Conv2d(cin, cout, 3, padding=1, bias=False)


class ResBlock(nn.Module):
    """One ResNet-12 block; ``skip=False`` is BOIL's block without the skip connection
    (its "w/o LSC", blocks type b, for the last block), which then has the activation after
    the third BatchNorm like the other two."""

    def __init__(
        self,
        cin: int,
        cout: int,
        bn: str = "transductive",
        bn_steps: int = 0,
        skip: bool = True,
        drop_rate: float = 0.0,
        block_size: int = 5,
    ) -> None:
        super().__init__()
        self.conv1, self.bn1 = conv3x3(cin, cout), norm(cout, bn, bn_steps)
        self.conv2, self.bn2 = conv3x3(cout, cout), norm(cout, bn, bn_steps)
        self.conv3, self.bn3 = conv3x3(cout, cout), norm(cout, bn, bn_steps)
        self.shortcut = (
            nn.Sequential(Conv2d(cin, cout, 1, bias=False), norm(cout, bn, bn_steps))
            if skip
            else None
        )
        self.pool = nn.MaxPool2d(2)
        self.drop = DropBlock(drop_rate, block_size)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        out = F.leaky_relu(self.bn1(self.conv1(x)), SLOPE)
        out = F.leaky_relu(self.bn2(self.conv2(out)), SLOPE)
        out = self.bn3(self.conv3(out))
        if self.shortcut is not None:
            out = out + self.shortcut(x)
        return self.drop(self.pool(F.leaky_relu(out, SLOPE)))


def plain_block(cin: int, cout: int, pool: bool, bn: str, bn_steps: int = 0) -> nn.Sequential:
    """ResNet-12's layer without the residual: 3×3 conv (no bias) → BN → LeakyReLU 0.1
    (→ 2×2 max-pool); the ``resnet`` co-learner's block (``conv.Block`` signature)."""
    layers = [conv3x3(cin, cout), norm(cout, bn, bn_steps), nn.LeakyReLU(SLOPE)]
    if pool:
        layers.append(nn.MaxPool2d(2))
    block = nn.Sequential(*layers)
    init_weights(block)
    return block


class ResNet12(BodyHead):
    """Body ``block1 … block4`` (each halves the map), head global average pool → linear."""

    def __init__(
        self,
        in_channels: int,
        n_way: int,
        image_size: int,
        widths: tuple[int, ...] = WIDTHS,
        bn: str = "transductive",
        bn_steps: int = 0,
        skip_last: bool = False,
        drop_rate: float = 0.0,
        block_size: int = 5,
    ) -> None:
        if image_size < 2 ** len(widths):
            raise ValueError(f"{image_size}px images are too small for {len(widths)} blocks")
        cins = (in_channels, *widths[:-1])
        body = OrderedDict(
            (
                f"block{i + 1}",
                ResBlock(
                    cin,
                    cout,
                    bn,
                    bn_steps,
                    skip=not (skip_last and i == len(widths) - 1),
                    drop_rate=drop_rate,
                    block_size=block_size,
                ),
            )
            for i, (cin, cout) in enumerate(zip(cins, widths, strict=True))
        )
        side = image_size // 2 ** len(widths)
        head = conv_k_fc(widths[-1], (side, side), n_way, pool="avg")
        super().__init__(nn.Sequential(body), head)


@dataclass(frozen=True)
class ResNet12Options:
    widths: tuple[int, ...] = WIDTHS  # BOIL's code: 64,128,256,512
    bn: str = "transductive"  # transductive (batch statistics always) | running
    bn_steps: int = 0  # γ/β rows per inner step (BNWB); MAML++ sets inner.steps; 0 = shared
    skip_last: bool = False  # BOIL's "w/o LSC": no skip connection in the last block
    drop_rate: float = 0.0  # DropBlock after every block's pool; 0 = off (BOIL's setting)
    block_size: int = 5  # DropBlock square side (clamped to the map)

    def __post_init__(self) -> None:
        check(len(self.widths) == 4, "model.widths must list 4 block widths")
        check(all(0 < w <= 4096 for w in self.widths), "model.widths must be in [1, 4096]")
        check(self.bn in BN_MODES, f"model.bn must be one of {', '.join(BN_MODES)}")
        check(0 <= self.bn_steps <= 10_000, "model.bn_steps must be in [0, 10000]")
        check(0.0 <= self.drop_rate < 1.0, "model.drop_rate must be in [0, 1)")
        check(0 < self.block_size <= 64, "model.block_size must be in [1, 64]")


@MODELS.register(
    "resnet12", ResNet12Options, "ResNet-12 (4 residual blocks; head = global average pool + FC)"
)
def resnet12(options: ResNet12Options, source: TaskSource, step_rows: int = 0) -> ResNet12:
    """``step_rows``: per-step BatchNorm rows the algorithm asks for (MAML++), unless
    ``bn_steps`` sets them."""
    input_shape, out_features = source.input_shape, source.out_features
    if len(input_shape) != 3 or input_shape[1] != input_shape[2]:
        raise ValueError(
            f"model 'resnet12' needs square images, not examples of shape {input_shape}"
        )
    return ResNet12(
        input_shape[0],
        out_features,
        input_shape[1],
        options.widths,
        options.bn,
        options.bn_steps or step_rows,
        options.skip_last,
        options.drop_rate,
        options.block_size,
    )
