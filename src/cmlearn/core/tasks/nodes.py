"""N-way K-shot node classification tasks on one graph (transductive, TLP-FSNC's episodes).

A task is ``N`` distinct classes of a split, drawn in random order (so labels ``0..N-1`` are a
fresh permutation of class ids each task), and ``K + Q`` distinct nodes of each class, the
first ``K`` the support, the rest the query; both ordered class by class. ``Q`` is
``queries`` in meta-training tasks, ``val_queries`` in validation tasks (0: as at test) and
``eval_queries`` in test tasks (TLP: 5, 5 and 10; the presets validate with 10, see
docs/graphs.md). The whole graph stays visible (features and Â of every node, any split): a
task only withholds labels. So a task's ``x`` is the int64 index of its nodes into the graph,
which a model takes from the source (``source.graph``). The draws are those of the image
sampler (``draw_classes``, ``draw_members``), from the same seeded generators.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from cmlearn.core.errors import CmlearnError
from cmlearn.core.registry import SAMPLERS
from cmlearn.core.tasks.batch import TaskBatch, split_queries
from cmlearn.core.tasks.classification import check_sizes, draw_classes, draw_members


@dataclass(frozen=True)
class Graph:
    """One graph: raw ``features`` ``[N, F]``, ``labels`` ``[N]`` and the propagation matrix
    ``adjacency`` Â = D̃⁻¹(A + I) ``[N, N]`` of the undirected graph (row-normalised, rows sum
    to 1), both matrices sparse COO float32."""

    features: Tensor
    labels: Tensor
    adjacency: Tensor

    @property
    def n_nodes(self) -> int:
        return self.labels.shape[0]

    @property
    def n_edges(self) -> int:
        """Directed edge entries of A (each undirected edge twice), self-loops excluded."""
        return self.adjacency._nnz() - self.n_nodes

    @property
    def n_classes(self) -> int:
        return int(self.labels.max()) + 1

    def to(self, device: torch.device | str) -> Graph:
        return Graph(*(t.to(device) for t in (self.features, self.labels, self.adjacency)))


@dataclass(frozen=True)
class NodeDataset:
    """A graph and its class splits. Class ``c``'s nodes are ``members[offsets[c] :
    offsets[c] + counts[c]]``, so a task's nodes are drawn by indexing, as a ``ClassPool``."""

    name: str
    graph: Graph
    members: Tensor
    offsets: Tensor
    counts: Tensor
    splits: dict[str, Tensor]  # split -> class ids
    kind: str = "nodes"

    @classmethod
    def create(cls, name: str, graph: Graph, splits: dict[str, Tensor]) -> NodeDataset:
        members = torch.argsort(graph.labels, stable=True)
        counts = torch.bincount(graph.labels, minlength=graph.n_classes)
        offsets = torch.cumsum(counts, 0) - counts
        return cls(name, graph, members, offsets, counts, splits)

    def min_count(self, split: str) -> int:
        return int(self.counts[self.splits[split]].min())

    def to(self, device: torch.device | str) -> NodeDataset:
        return NodeDataset(
            self.name, self.graph.to(device), self.members, self.offsets, self.counts, self.splits
        )


@dataclass(frozen=True)
class NodeTaskSource:
    """``ways``-way ``shots``-shot node tasks, ``queries`` (train), ``val_queries`` (val; 0: as
    test) or ``eval_queries`` (test) query nodes per class; batches live on the graph's device."""

    dataset: NodeDataset
    ways: int
    shots: int
    queries: int
    eval_queries: int
    loss: str = "ce"
    metric: str = "accuracy"
    context: int = 0  # >0: two sets of this many task nodes follow each node list (AMM-GNN)
    input_shape: tuple[int, ...] = ()  # one example is one node index
    val_queries: int = 0

    def __post_init__(self) -> None:
        check_sizes(self, unit="nodes")
        fewest = min(split_queries(self, split) for split in ("train", "val", "test"))
        smallest = self.ways * (self.shots + fewest)
        if self.context > smallest:
            raise CmlearnError(
                f"task.context={self.context} needs that many nodes in a task, which has "
                f"{self.ways}·({self.shots}+{fewest}) = {smallest}"
            )

    @property
    def graph(self) -> Graph:
        return self.dataset.graph

    @property
    def out_features(self) -> int:
        return self.ways

    def sample(self, n_tasks: int, gen: torch.Generator, split: str = "train") -> TaskBatch:
        ds, n, k = self.dataset, self.ways, self.shots
        q = split_queries(self, split)
        classes = ds.splits[split]
        ids = classes[draw_classes(n_tasks, len(classes), n, gen)]  # [T, N]
        picks = draw_members(ds.counts[ids], k + q, gen)  # [T, N, K+Q]
        nodes = ds.members[ds.offsets[ids][..., None] + picks]
        labels = torch.arange(n)
        support, query = nodes[:, :, :k].flatten(1, 2), nodes[:, :, k:].flatten(1, 2)
        if self.context:  # two sets drawn from the task's nodes, after (not before) the draws
            c = self.context
            keys = torch.rand(n_tasks, 2, n * (k + q), generator=gen)
            picks = keys.topk(c, dim=-1).indices.flatten(1)  # [T, 2c]
            context = nodes.flatten(1).gather(1, picks)
            support = torch.cat([support, context], 1)
            query = torch.cat([query, context], 1)
        batch = TaskBatch(
            support,
            labels.repeat_interleave(k).expand(n_tasks, n * k).contiguous(),
            query,
            labels.repeat_interleave(q).expand(n_tasks, n * q).contiguous(),
        )
        return batch.to(self.graph.labels.device)


@SAMPLERS.register("nodes")
def node_source(dataset: NodeDataset, task, device: torch.device) -> NodeTaskSource:
    return NodeTaskSource(
        dataset.to(device),
        task.ways,
        task.shots,
        task.queries,
        task.eval_queries,
        context=task.context,
        val_queries=task.val_queries,
    )
