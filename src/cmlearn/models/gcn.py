"""A graph encoder whose per-task input is an index of nodes into a fixed graph."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from cmlearn.models.layers import TaskLinear


def normalized_adjacency(edge_index: Tensor, n_nodes: int) -> Tensor:
    """Dense D^{-1/2}(A + I)D^{-1/2} of an undirected graph (Kipf & Welling 2017)."""
    adj = torch.zeros(n_nodes, n_nodes)
    adj[edge_index[0], edge_index[1]] = 1.0
    adj = ((adj + adj.T) > 0).float() + torch.eye(n_nodes)
    d = adj.sum(1).rsqrt()
    return d[:, None] * adj * d[None, :]


class GraphEncoder(nn.Module):
    """One GCN layer over the whole graph, then the rows of the task's nodes.

    The node-feature matrix and the normalised adjacency are non-persistent buffers: they are
    the shared input of every task and never part of a checkpoint. Each task's ``x`` is the
    index of its nodes, so a task batch stays a small tensor of indices.
    """

    task_batched = False

    def __init__(self, features: Tensor, adjacency: Tensor, hidden: int) -> None:
        super().__init__()
        self.register_buffer("features", features, persistent=False)
        self.register_buffer("adjacency", adjacency, persistent=False)
        self.lin = TaskLinear(features.shape[1], hidden)

    def forward(self, index: Tensor) -> Tensor:
        h = torch.relu(self.adjacency @ self.lin(self.features))
        return h[index]
