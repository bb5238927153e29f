"""Your own CNN on your own image tensors: MAML against CML (and CML†) on the same tasks.

Run ``python examples/own_cnn.py`` (``--tiny`` for a seconds-long smoke run). It trains MAML
and MAML+CML on 5-way 1-shot tasks drawn from synthetic image classes, scores both (and
CML†, the co-learner's prediction) on the same seeded test tasks, prints the table with the
paired difference, and leaves run folders the shell reads::

    cmlearn eval runs/own-cnn/cml-s0
    cmlearn compare --like runs/own-cnn/maml-s0 --methods maml,cml --out runs/own-cnn
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import Tensor, nn

import cmlearn


class SmallCNN(nn.Module):
    """Two conv blocks and a linear classifier; ``classifier`` (the last child) is the head.

    BatchNorm without running statistics: batch statistics in every pass, as MAML's code."""

    def __init__(self, out_features: int = 5, width: int = 32, size: int = 16) -> None:
        super().__init__()

        def block(c_in: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(c_in, width, 3, padding=1),
                nn.BatchNorm2d(width, track_running_stats=False),
                nn.ReLU(),
                nn.MaxPool2d(2),
            )

        self.features = nn.Sequential(block(1), block(width))
        self.classifier = nn.Linear(width * (size // 4) ** 2, out_features)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x).flatten(1))


def shapes(classes: int = 60, per_class: int = 20, size: int = 16, seed: int = 0):
    """Synthetic image classes (your own tensors go here): each class is a random blurred
    template; its examples are the template shifted by up to 2 pixels, plus noise. Labels
    are int32, to show that any integer dtype works."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(classes, 1, size // 4, size // 4, generator=gen)
    templates = nn.functional.interpolate(coarse, size=size, mode="bilinear")
    x = templates.repeat_interleave(per_class, 0)
    shifts = torch.randint(-2, 3, (len(x), 2), generator=gen)
    x = torch.stack(
        [img.roll(tuple(s.tolist()), (-2, -1)) for img, s in zip(x, shifts, strict=True)]
    )
    x = x + 0.3 * torch.randn(x.shape, generator=gen)
    y = torch.arange(classes, dtype=torch.int32).repeat_interleave(per_class)
    return x, y


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="a seconds-long smoke run")
    parser.add_argument("--steps", type=int, help="meta-training steps (default: a full run)")
    parser.add_argument("--out", type=Path, default=Path("runs/own-cnn"))
    args = parser.parse_args()
    steps, tasks = (4, 20) if args.tiny else (1500, 600)
    steps = args.steps or steps
    cfg = cmlearn.experiment(
        SmallCNN,
        shapes,
        ways=5,
        shots=1,
        queries=5,
        eval_queries=5,
        gamma=0.5,  # the co-learner's weight γ (methods below switch it on or off)
        steps=steps,
        val_every=max(steps // 5, 2),
        val_tasks=tasks // 4,
        test_tasks=tasks,
    )
    report = cmlearn.compare_methods(cfg, ["maml", "cml"], [0], args.out)
    print(cmlearn.format_table(report))


if __name__ == "__main__":
    main()
