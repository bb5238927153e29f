"""Two-layer GCN encoders for few-shot node classification, as TLP-FSNC (Tan et al. 2022) ran them.

One body serves the three methods of the paper's Table 3; only the readout and the input
scaling differ:

- ``gcn`` (TLP's "Meta-GNN", MAML over a full-graph GCN): node v's embedding is row v of
  H2 = Â·drop(ReLU(Â X W1 + b1))·W2 + b2.
- ``gmeta`` (G-Meta as TLP ran it): the mean over the rows of the same GCN run on v's 2-hop
  subgraph S(v), with the slice Â[S, S] of the global Â (not renormalised).
- ``ammgnn`` (AMM-GNN as TLP ran it): the full-graph GCN on X ⊙ s, with a per-task,
  per-attribute scale s = 1 + 0.01·α computed from two random sets of the task's nodes by a
  meta-learned map that is never adapted, and a cosine regulariser on the outer loss.

Nothing is computed that the output does not use (docs/graphs.md): every output is

    e = R · drop(ReLU(L · (Z · (s ⊙ W1)) + b1)) · W2 + b2

with parameter-free sparse ``L`` and ``R`` and dense rows ``Z`` that depend only on the task's
nodes, so they are built once per node list (a ``Plan``, cached) and the 20 inner steps are
small matrix products. Full graph: Z = rows of P = ÂX at the 1-hop neighbours of the task's
nodes, L = identity, R = Â[nodes, neighbours] (H2 is needed only at the task's nodes, H1 only
at their neighbours). G-Meta: Z = the raw features of the union U of the subgraphs,
L = block-diagonal Â[S, S] over the subgraphs (columns into U), R = the mean readout
c_S = Â[S, S]ᵀ1 / |S| (the mean of Â_S H1 W2 + b2 over rows is c_Sᵀ H1 W2 + b2). All three
are exact reformulations, tested against the dense computation.
"""

from __future__ import annotations

import math
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cmlearn.core.models.cooperative import BodyHead
from cmlearn.core.models.layers import TaskLinear, tlp_init
from cmlearn.core.registry import MODELS, check
from cmlearn.core.tasks.nodes import Graph

if TYPE_CHECKING:
    import scipy.sparse as sp

READOUTS = ("node", "subgraph")
INITS = ("tlp", "torch")
BALL_BYTES = 256 * 2**20  # 2-hop subgraphs kept (all of CiteSeer's; Amazon's most-drawn)
PLAN_BYTES = 512 * 2**20  # plans kept (fixed validation tasks reuse theirs at every round)
DENSE_FROM = 0.25  # a matrix this full is kept dense: rows are then sliced by one memcpy


class Propagation:
    """A constant sparse matrix A in CSR form with its transpose, so that ``A @ D`` and its
    backward ``Aᵀ @ G`` are both row-major CSR products (6–9× faster than COO on CPU)."""

    def __init__(self, matrix: sp.spmatrix) -> None:
        self.forward = _csr_tensor(matrix.tocsr())
        self.backward = _csr_tensor(matrix.T.tocsr())

    @property
    def nbytes(self) -> int:
        return sum(
            t.values().nbytes + t.col_indices().nbytes + t.crow_indices().nbytes
            for t in (self.forward, self.backward)
        )

    def to(self, like: Tensor) -> Propagation:
        """On ``like``'s device, in its dtype."""
        moved = object.__new__(Propagation)
        moved.forward, moved.backward = (m.to(like) for m in (self.forward, self.backward))
        return moved

    def __matmul__(self, dense: Tensor) -> Tensor:
        return _Propagate.apply(dense, self)


class _Propagate(torch.autograd.Function):
    @staticmethod
    def forward(dense: Tensor, a: Propagation) -> Tensor:
        return a.forward @ dense.contiguous()  # a strided operand takes a slow transposing path

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.a = inputs[1]

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        return ctx.a.backward @ grad.contiguous(), None


@dataclass(frozen=True)
class Plan:
    """The parameter-free part of a forward over one list of nodes (see the module doc)."""

    rows: Tensor | Propagation  # Z: [U, F], sparse where the features are (CiteSeer: 0.9 %)
    layer1: Propagation | None  # L: [R, U], None for the identity
    readout: Propagation  # R: [n, R]

    @property
    def nbytes(self) -> int:
        layer1 = self.layer1.nbytes if self.layer1 is not None else 0
        return self.rows.nbytes + layer1 + self.readout.nbytes

    def to(self, like: Tensor) -> Plan:
        """On ``like``'s device, in its dtype (float64 for gradient checks)."""
        layer1 = None if self.layer1 is None else self.layer1.to(like)
        return Plan(self.rows.to(like), layer1, self.readout.to(like))


class GraphOperators:
    """The graph as scipy CSR matrices, for building plans by row slicing. Kept off the
    module's state: the graph is the shared input of every task, never part of a model file."""

    def __init__(self, graph: Graph, need_propagated: bool) -> None:
        self.adjacency = _csr(graph.adjacency)
        self.features = _dense_if_full(_csr(graph.features))  # Amazon-Computer's: 35 % full
        self.propagated = None
        self._balls: dict[int, Ball] = {}
        self._ball_bytes = 0
        if need_propagated:  # P = ÂX once; dense where it is dense (Amazon-Computer: 90 %)
            p = self.adjacency @ self.features  # dense if the features are
            self.propagated = p if isinstance(p, np.ndarray) else _dense_if_full(p.tocsr())

    def plan(self, nodes: np.ndarray, readout: str) -> Plan:
        return self._subgraphs(nodes) if readout == "subgraph" else self._full(nodes)

    def _full(self, nodes: np.ndarray) -> Plan:
        a = self.adjacency[nodes]
        ring = np.unique(a.indices)  # 1-hop neighbours (self-loops include the nodes)
        return Plan(_rows(self.propagated, ring), None, Propagation(a[:, ring]))

    def ball(self, v: int) -> Ball:
        """Node ``v``'s 2-hop subgraph (cached: a node recurs across tasks)."""
        found = self._balls.get(v)
        if found is not None:
            return found
        a = self.adjacency
        ring = a.indices[a.indptr[v] : a.indptr[v + 1]]  # v's row of Â (self-loop included)
        nodes = np.unique(a[ring].indices)  # then the rows of those neighbours
        block = a[nodes][:, nodes].tocoo()
        weights = np.asarray(block.sum(0)).ravel() / len(nodes)  # the mean readout Â_Sᵀ1/|S|
        found = Ball(nodes, block.row, block.col, block.data, weights)
        if self._ball_bytes + found.nbytes <= BALL_BYTES:
            self._balls[v] = found
            self._ball_bytes += found.nbytes
        return found

    def _subgraphs(self, nodes: np.ndarray) -> Plan:
        balls = [self.ball(int(v)) for v in nodes]
        union = np.unique(np.concatenate([b.nodes for b in balls]))
        sizes = np.array([len(b.nodes) for b in balls])
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        total = int(sizes.sum())
        rows = np.concatenate([s + b.row for s, b in zip(starts, balls, strict=True)])
        cols = np.concatenate([np.searchsorted(union, b.nodes)[b.col] for b in balls])
        vals = np.concatenate([b.val for b in balls])
        import scipy.sparse as sp

        layer1 = sp.csr_matrix((vals, (rows, cols)), shape=(total, len(union)))
        pool = sp.csr_matrix(
            (
                np.concatenate([b.weights for b in balls]),
                (np.repeat(np.arange(len(balls)), sizes), np.arange(total)),
            ),
            shape=(len(balls), total),
        )
        return Plan(_rows(self.features, union), Propagation(layer1), Propagation(pool))


@dataclass(frozen=True)
class Ball:
    """A node's 2-hop subgraph S: its nodes, Â[S, S] in local COO form, the readout weights."""

    nodes: np.ndarray
    row: np.ndarray
    col: np.ndarray
    val: np.ndarray
    weights: np.ndarray

    @property
    def nbytes(self) -> int:
        return sum(x.nbytes for x in (self.nodes, self.row, self.col, self.val, self.weights))


def _csr(t: Tensor) -> sp.csr_matrix:
    import scipy.sparse as sp

    t = t.coalesce().cpu()
    i = t.indices().numpy()
    return sp.csr_matrix((t.values().numpy(), (i[0], i[1])), shape=tuple(t.shape))


def _dense_if_full(m: sp.csr_matrix) -> np.ndarray | sp.csr_matrix:
    return m.toarray() if m.nnz > DENSE_FROM * np.prod(m.shape) else m


def _rows(matrix: np.ndarray | sp.csr_matrix, rows: np.ndarray) -> Tensor | Propagation:
    """Z = ``matrix[rows]``: sparse when under 10 % full (``Z @ W1ᵀ`` then costs its non-zeros,
    and W1's gradient Zᵀ·G too), else dense."""
    part = matrix[rows]
    if not isinstance(part, np.ndarray) and part.nnz < 0.1 * np.prod(part.shape):
        return Propagation(part)
    return _as_tensor(part)


def _dense(matrix: np.ndarray | sp.csr_matrix, rows: np.ndarray) -> Tensor:
    return _as_tensor(matrix[rows])


def _as_tensor(part: np.ndarray | sp.csr_matrix) -> Tensor:
    return torch.from_numpy(
        np.ascontiguousarray(
            part if isinstance(part, np.ndarray) else part.toarray(), dtype=np.float32
        )
    )


def _csr_tensor(m: sp.csr_matrix) -> Tensor:
    m.sort_indices()
    with warnings.catch_warnings():  # "sparse CSR support is in beta": we use mm only
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(
            torch.from_numpy(m.indptr.astype(np.int64)),
            torch.from_numpy(m.indices.astype(np.int64)),
            torch.from_numpy(m.data.astype(np.float32)),
            m.shape,
        )


class GCNEncoder(nn.Module):
    """ψ: the two GCN layers (and AMM-GNN's modulation maps) over a fixed graph.

    Input: the int64 indices of ``n`` nodes, followed (AMM-GNN) by two sets of ``subset``
    context nodes of the same task; output ``[n, hidden]``. Dropout acts on H1 in train mode.
    """

    def __init__(
        self,
        graph: Graph,
        hidden: int,
        dropout: float,
        readout: str,
        subset: int = 0,
        scale: float = 0.01,
    ) -> None:
        super().__init__()
        features = graph.features.shape[1]
        self.ops = GraphOperators(graph, need_propagated=readout == "node")
        self.readout, self.dropout, self.subset, self.scale = readout, dropout, subset, scale
        self.lin1 = TaskLinear(features, hidden)
        self.lin2 = TaskLinear(hidden, hidden)
        self.modulation = Modulation(subset) if subset else None
        self._plans: OrderedDict[tuple[bytes, torch.dtype, torch.device], Plan] = OrderedDict()
        self._bytes = 0

    def plan(self, nodes: Tensor) -> Plan:
        """The cached plan of ``nodes`` (the same list is seen at every inner step)."""
        ids = nodes.detach().cpu().numpy()
        like = self.lin1.weight  # a plan lives with the weights: a moved model gets new plans
        key = (ids.tobytes(), like.dtype, like.device)
        plan = self._plans.get(key)
        if plan is None:
            plan = self.ops.plan(ids, self.readout).to(like)
            self._plans[key] = plan
            self._bytes += plan.nbytes
            while self._bytes > PLAN_BYTES and len(self._plans) > 2:  # least recently used
                self._bytes -= self._plans.popitem(last=False)[1].nbytes
        else:
            self._plans.move_to_end(key)
        return plan

    def clear_cache(self) -> None:
        """Forget every plan and 2-hop subgraph (benchmarks time a task seen for the first time)."""
        self._plans.clear()
        self._bytes = 0
        self.ops._balls.clear()
        self.ops._ball_bytes = 0

    def split(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """(the nodes to embed, the two context sets ``[2, subset]`` or None)."""
        if not self.subset:
            return x, None
        return x[: -2 * self.subset], x[-2 * self.subset :].view(2, self.subset)

    def context_features(self, context: Tensor) -> Tensor:
        """Raw features of the two context sets, ``[2, subset, F]``."""
        ids = context.detach().cpu().numpy().ravel()
        return _dense(self.ops.features, ids).view(2, self.subset, -1).to(self.lin1.weight)

    def forward(self, x: Tensor) -> Tensor:
        nodes, context = self.split(x)
        plan = self.plan(nodes)
        weight = self.lin1.weight
        if context is not None:  # Â(X ⊙ s)W1 = P(diag(s)W1): scale W1's input columns
            alpha, _ = self.modulation(self.context_features(context))
            weight = weight * (1.0 + self.scale * alpha.mean(0))
        pre = plan.rows @ weight.T
        if plan.layer1 is not None:
            pre = plan.layer1 @ pre
        h = F.dropout(torch.relu(pre + self.lin1.bias), self.dropout, self.training)
        return self.lin2(plan.readout @ h)

    def penalty(self, x: Tensor) -> Tensor:
        """AMM-GNN's regulariser −(cos(α1, α2) + cos(β1, β2)) of one task (0 without
        modulation); the engine scales it by the model's ``penalty_weight``."""
        _, context = self.split(x)
        if context is None:
            return x.new_zeros((), dtype=torch.float32)
        alpha, beta = self.modulation(self.context_features(context))
        cos = F.cosine_similarity
        return -(cos(alpha[0], alpha[1], dim=0) + cos(beta[0], beta[1], dim=0))


class Modulation(nn.Module):
    """AMM-GNN's two maps R^subset → R, applied across the context nodes for each attribute:
    α_j[f] = Σ_i w_α[i]·X[c_j[i], f] + b_α (and β likewise), j = 1, 2."""

    outer_only = True  # meta-learned, never adapted in the inner loop

    def __init__(self, subset: int) -> None:
        super().__init__()
        self.alpha = TaskLinear(subset, 1)
        self.beta = TaskLinear(subset, 1)

    def forward(self, feats: Tensor) -> tuple[Tensor, Tensor]:
        """``feats`` ``[2, subset, F]`` → α, β ``[2, F]``."""
        across = feats.transpose(1, 2)  # [2, F, subset]
        return self.alpha(across).squeeze(-1), self.beta(across).squeeze(-1)


class GraphModel(BodyHead):
    """Body ``gcn`` (the encoder, the co-learner's feature point), head Linear(hidden → N).
    Query losses are taken in eval mode (no dropout), as TLP does."""

    query_eval = True
    vmappable = False  # node ids pick each task's sparse operators on the host (``plan``)

    def __init__(self, encoder: GCNEncoder, out_features: int, penalty_weight: float) -> None:
        super().__init__(
            nn.Sequential(OrderedDict(gcn=encoder)),
            TaskLinear(encoder.lin2.weight.shape[0], out_features),
        )
        self.penalty_weight = penalty_weight

    def penalty(self, x: Tensor) -> Tensor:
        """Per-task outer-loss regulariser, ``[T]`` for node lists ``x`` ``[T, n]``."""
        encoder = self.body.gcn
        return self.penalty_weight * torch.stack([encoder.penalty(xi) for xi in x.unbind(0)])


@dataclass(frozen=True)
class GCNOptions:
    hidden: int = 16
    dropout: float = 0.5
    init: str = "tlp"  # tlp: U(±1/√fan_out) for weights and biases; torch: nn.Linear's

    def __post_init__(self) -> None:
        check(0 < self.hidden <= 100_000, "model.hidden must be a positive width")
        check(0.0 <= self.dropout < 1.0, "model.dropout must be in [0, 1)")
        check(self.init in INITS, f"model.init must be one of {', '.join(INITS)}")


@dataclass(frozen=True)
class AMMOptions(GCNOptions):
    subset: int = 10  # nodes in each of the two context sets (needs task.context = subset)
    scale: float = 0.01  # s = 1 + scale·α
    penalty: float = 0.01  # weight of −(cos α + cos β) in the outer loss

    def __post_init__(self) -> None:
        super().__post_init__()
        check(0 < self.subset <= 10_000, "model.subset must be positive")
        check(
            math.isfinite(self.scale) and math.isfinite(self.penalty),
            "model.scale and model.penalty must be finite",
        )


def _graph_model(readout: str):
    def build(options: GCNOptions, source, step_rows: int = 0) -> GraphModel:
        graph = getattr(source, "graph", None)
        if graph is None:
            raise ValueError("graph models need a graph dataset (data.name=citeseer, …)")
        subset = getattr(options, "subset", 0)
        if subset and getattr(source, "context", 0) != subset:
            raise ValueError(
                f"model 'ammgnn' draws its modulation from two sets of {subset} task nodes: "
                f"set task.context={subset}"
            )
        if not subset and getattr(source, "context", 0):
            raise ValueError("task.context is for model 'ammgnn'; set task.context=0")
        encoder = GCNEncoder(
            graph, options.hidden, options.dropout, readout, subset, getattr(options, "scale", 0.0)
        )
        model = GraphModel(encoder, source.out_features, getattr(options, "penalty", 0.0))
        if options.init == "tlp":
            tlp_init(model)
        return model

    return build


MODELS.register("gcn", GCNOptions, "MAML-GCN (TLP's Meta-GNN): full-graph 2-layer GCN")(
    _graph_model("node")
)
MODELS.register(
    "gmeta", GCNOptions, "G-Meta as TLP ran it: mean-pooled 2-hop subgraph GCN + linear head"
)(_graph_model("subgraph"))
MODELS.register(
    "ammgnn", AMMOptions, "AMM-GNN as TLP ran it: full-graph GCN on task-scaled attributes"
)(_graph_model("node"))
