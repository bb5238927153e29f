"""Tasks from the user's own data, through the built-in samplers (torch only).

- ``few_shot``: N-way K-shot classification tasks over labelled tensors ``(X, y)`` or a
  ``torch.utils.data.Dataset`` of ``(x, label)`` pairs; the classes are split into
  class-disjoint ``train``/``val``/``test`` sets, and tasks are drawn by the same sampler
  (``tasks.classification.ClassificationSource``) as Omniglot's or miniImageNet's.
- ``regression``: a regression family given as a function, sampled like the sinusoid
  (``tasks.sinusoid.SinusoidSource``).

Seeds work as for the built-in data: ``source.sample(n, cmlearn.generator(split, seed, i),
split)`` depends only on ``(split, seed, i)``, so the same seed gives the same tasks.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from cmlearn.core.errors import CmlearnError
from cmlearn.core.tasks.batch import TaskBatch
from cmlearn.core.tasks.classification import ClassificationSource
from cmlearn.core.tasks.pool import ClassDataset, ClassPool, ClassSplit
from cmlearn.core.tasks.sinusoid import SinusoidSource

SPLITS = ("train", "val", "test")
Splits = tuple[float, float, float] | Mapping[str, Sequence[int]]


def labelled(data: Any, labels: Any = None) -> tuple[Tensor, Tensor]:
    """``(X, y)`` from tensors (or arrays) or from a ``Dataset`` of ``(x, label)`` pairs (its
    examples tensors or arrays: give an image dataset a to-tensor transform)."""
    if labels is None:
        if isinstance(data, tuple | list) and len(data) == 2:
            data, labels = data
        elif hasattr(data, "__getitem__") and hasattr(data, "__len__"):
            pairs = [data[i] for i in range(len(data))]
            if not pairs or not all(isinstance(p, tuple | list) and len(p) == 2 for p in pairs):
                raise CmlearnError("a dataset for few_shot must hold (example, label) pairs")
            data = torch.stack([torch.as_tensor(x) for x, _ in pairs])
            labels = torch.as_tensor([int(y) for _, y in pairs])
        else:
            raise CmlearnError("few_shot needs (X, y) tensors or a Dataset of (x, label) pairs")
    x, y = torch.as_tensor(data), torch.as_tensor(labels)
    if y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
        raise CmlearnError(f"labels must be integers (any integer dtype), not {y.dtype}")
    if y.dim() != 1 or len(y) != len(x):
        raise CmlearnError(
            f"labels must be one integer per example: {tuple(y.shape)} labels for {len(x)} examples"
        )
    if not x.dtype.is_floating_point and x.dtype != torch.uint8:
        x = x.float()
    return x, y.long()


def class_dataset(
    data: Any,
    labels: Any = None,
    splits: Splits = (0.6, 0.2, 0.2),
    split_seed: int = 0,
    name: str = "data",
) -> ClassDataset:
    """A class pool of the user's examples with class-disjoint splits.

    ``splits``: fractions of the classes for ``train``, ``val`` and ``test`` (the classes are
    shuffled by ``split_seed`` first, so the split is fixed by that seed), or a mapping from
    split name to the labels it holds. ``uint8`` examples are images, scaled to ``[0, 1]``
    when sampled as the built-in datasets are; floating-point ones are used as they are.
    Example: a data function for ``cmlearn.fit`` may ``return cmlearn.class_dataset(X, y,
    splits=(0.7, 0.1, 0.2))``.
    """
    x, y = labelled(data, labels)
    classes, y_ids = torch.unique(y, sorted=True, return_inverse=True)
    order = torch.argsort(y_ids, stable=True)
    counts = torch.bincount(y_ids, minlength=len(classes))
    offsets = torch.cumsum(counts, 0) - counts
    pool = ClassPool(x[order], offsets, counts, tuple(str(int(c)) for c in classes))
    members = _split_classes(classes, splits, split_seed)
    parts = {
        split: ClassSplit(ids, torch.zeros(len(ids), dtype=torch.long))
        for split, ids in members.items()
    }
    return ClassDataset(name, pool, parts)


def _split_classes(classes: Tensor, splits: Splits, seed: int) -> dict[str, Tensor]:
    """Pool class ids of each split (positions in the sorted ``classes``)."""
    n = len(classes)
    if isinstance(splits, Mapping):
        if set(splits) != set(SPLITS):
            raise CmlearnError(f"splits must name exactly {', '.join(SPLITS)}")
        known = {int(c): i for i, c in enumerate(classes)}
        out, seen = {}, set()
        for split in SPLITS:
            wanted = [int(c) for c in splits[split]]
            missing = [c for c in wanted if c not in known]
            if missing:
                raise CmlearnError(
                    f"split {split!r} names label {missing[0]}, which no example has"
                )
            if seen & set(wanted):
                raise CmlearnError(f"label {min(seen & set(wanted))} is in two splits")
            seen |= set(wanted)
            out[split] = torch.tensor([known[c] for c in wanted], dtype=torch.long)
        return out
    fractions = tuple(float(f) for f in splits)
    if len(fractions) != 3 or min(fractions) < 0 or sum(fractions) > 1 + 1e-9:
        raise CmlearnError(
            f"splits must be three fractions of the classes (train, val, test) summing to at "
            f"most 1, got {splits}"
        )
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_train, n_val = round(fractions[0] * n), round(fractions[1] * n)
    n_test = min(round(fractions[2] * n), n - n_train - n_val)
    ends = (n_train, n_train + n_val, n_train + n_val + n_test)
    starts = (0, *ends[:2])
    return {split: order[a:b] for split, a, b in zip(SPLITS, starts, ends, strict=True)}


def few_shot(
    data: Any,
    labels: Any = None,
    *,
    ways: int = 5,
    shots: int = 1,
    queries: int = 15,
    eval_queries: int | None = None,
    val_queries: int = 0,
    splits: Splits = (0.6, 0.2, 0.2),
    split_seed: int = 0,
    name: str = "data",
) -> ClassificationSource:
    """N-way K-shot tasks over your labelled examples (``X`` ``[n, …]`` and integer labels
    ``y`` ``[n]`` of any dtype, or a ``Dataset`` of ``(x, label)``).

    Each task draws ``ways`` classes of a split (labels ``0…ways-1`` in random order),
    ``shots`` support and ``queries`` query examples per class (``eval_queries`` in test
    tasks, ``val_queries`` in validation ones; 0 = as test). Example::

        tasks = cmlearn.few_shot(X, y, ways=5, shots=1, queries=15)
        batch = tasks.sample(4, cmlearn.generator("train", 0, step))  # a TaskBatch
    """
    dataset = class_dataset(data, labels, splits, split_seed, name)
    eval_q = queries if eval_queries is None else eval_queries
    for key, value in (("ways", ways), ("shots", shots), ("queries", queries), ("eval", eval_q)):
        if value <= 0:
            raise CmlearnError(f"{key} must be positive (got {value})")
    return ClassificationSource(dataset, ways, shots, queries, eval_q, val_queries=val_queries)


RegressionFunction = Callable[[int, int, torch.Generator], tuple[Tensor, ...]]


@dataclass(frozen=True)
class RegressionFamily:
    """A family of regression tasks given as ``fn(n_tasks, n_points, gen)``, which returns
    ``(x, y)`` or ``(x, y, info)``: ``x`` ``[n_tasks, n_points, *input_shape]``, ``y``
    ``[n_tasks, n_points, out_features]``, ``info`` ``[n_tasks, k]`` optional task
    descriptors. It must draw everything from ``gen`` (so the same seed gives the same tasks);
    the first ``shots`` points of a task are its support set, the rest its query set.
    Example: ``cmlearn.RegressionFamily(my_fn, input_shape=(2,), out_features=1)``."""

    fn: RegressionFunction
    input_shape: tuple[int, ...] = (1,)
    out_features: int = 1
    kind: str = "regression"

    def sample(self, n_tasks: int, shots: int, queries: int, gen: torch.Generator) -> TaskBatch:
        drawn = self.fn(n_tasks, shots + queries, gen)
        if not isinstance(drawn, tuple | list) or len(drawn) not in (2, 3):
            raise CmlearnError("a regression family returns (x, y) or (x, y, info)")
        x, y = drawn[0], drawn[1]
        info = drawn[2] if len(drawn) == 3 else None
        n = shots + queries
        want_x, want_y = (n_tasks, n, *self.input_shape), (n_tasks, n, self.out_features)
        if tuple(x.shape) != want_x or tuple(y.shape) != want_y:
            raise CmlearnError(
                f"the regression family returned x {tuple(x.shape)} and y {tuple(y.shape)}; "
                f"expected {want_x} and {want_y}"
            )
        return TaskBatch(x[:, :shots], y[:, :shots], x[:, shots:], y[:, shots:], info)


def regression(
    fn: RegressionFunction | RegressionFamily,
    *,
    shots: int = 10,
    queries: int = 10,
    eval_queries: int | None = None,
    val_queries: int = 0,
    input_shape: tuple[int, ...] = (1,),
    out_features: int = 1,
    device: torch.device | str = "cpu",
) -> SinusoidSource:
    """Regression tasks from your family ``fn`` (see ``RegressionFamily``), sampled as the
    sinusoid is: ``shots`` support and ``queries`` query points (``eval_queries`` at test),
    MSE loss. Example::

        def lines(n_tasks, n_points, gen):
            slope = torch.rand(n_tasks, 1, 1, generator=gen) * 4 - 2
            x = torch.rand(n_tasks, n_points, 1, generator=gen) * 10 - 5
            return x, slope * x

        tasks = cmlearn.regression(lines, shots=10)
    """
    family = (
        fn
        if isinstance(fn, RegressionFamily)
        else RegressionFamily(fn, tuple(input_shape), out_features)
    )
    eval_q = queries if eval_queries is None else eval_queries
    return SinusoidSource(
        shots,
        queries,
        eval_q,
        family,  # any family with ``sample(n_tasks, shots, queries, gen)``
        torch.device(device),
        family.input_shape,
        family.out_features,
        val_queries=val_queries,
    )


class SourceData:
    """A complete task source the user built (anything with ``sample(n, gen, split)``,
    ``input_shape``, ``out_features``, ``loss`` and ``metric``), as a dataset entry: its
    sampler returns it as it is (the run's task sizes are the source's own)."""

    kind = "source"

    def __init__(self, source: Any) -> None:
        self.source = source


def as_data(obj: Any, name: str) -> ClassDataset | RegressionFamily | SourceData:
    """What a user's data function returned, as a data object the samplers take: a
    ``ClassDataset``, a ``RegressionFamily``, a task source, ``(X, y)`` tensors or a
    ``Dataset`` of ``(x, label)`` pairs (the last two split by ``class_dataset``'s default)."""
    if isinstance(obj, ClassDataset | RegressionFamily):
        return obj
    needed = ("sample", "input_shape", "out_features", "loss", "metric")
    if all(hasattr(obj, k) for k in needed):
        return SourceData(obj)
    return class_dataset(obj, name=name)
