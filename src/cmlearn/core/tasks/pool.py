"""A labelled pool of examples held in memory, and class splits that index it."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class ClassPool:
    """Examples of every class stored back to back: class ``c`` owns rows
    ``offsets[c] : offsets[c] + counts[c]`` of ``images`` (uint8 ``[n, C, H, W]``, scaled to
    ``[0, 1]`` when sampled; or floating point of any example shape, used as it is)."""

    images: Tensor
    offsets: Tensor
    counts: Tensor
    names: tuple[str, ...]

    @classmethod
    def equal(cls, images: Tensor, names: tuple[str, ...]) -> ClassPool:
        """A pool from ``[classes, per_class, …]``, every class with the same count."""
        n, m = images.shape[:2]
        return cls(
            images.flatten(0, 1),
            torch.arange(n) * m,
            torch.full((n,), m),
            names,
        )

    def to(self, device: torch.device | str) -> ClassPool:
        return ClassPool(self.images.to(device), self.offsets, self.counts, self.names)


@dataclass(frozen=True)
class ClassSplit:
    """The classes of one split: pool class ids and a rotation per class (quarter turns;
    ``-1`` = a random multiple of 90° drawn per task, Finn et al.'s augmentation)."""

    classes: Tensor
    rotations: Tensor

    def __len__(self) -> int:
        return len(self.classes)


@dataclass(frozen=True)
class ClassDataset:
    """A classification dataset: one pool and its ``train``/``val``/``test`` splits.

    ``mean`` and ``std`` (one value per channel, on the ``[0, 1]`` scale, both or neither) ask
    the sampler to normalise each image after dividing by 255; ``None`` (the default) leaves
    pixels in ``[0, 1]``, as the MAML, BOIL and CML code feed them."""

    name: str
    pool: ClassPool
    splits: dict[str, ClassSplit]
    kind: str = "classes"
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.pool.images.shape[1:])

    def min_count(self, split: str) -> int:
        return int(self.pool.counts[self.splits[split].classes].min())
