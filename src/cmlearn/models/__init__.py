"""Backbones split into a body (ψ) and a head (θ), co-learner heads, and their pairing."""

from cmlearn.models.colearner import build_colearner
from cmlearn.models.conv import ConvNet
from cmlearn.models.cooperative import BodyHead, Cooperative
from cmlearn.models.gcn import GraphEncoder, normalized_adjacency
from cmlearn.models.layers import TaskLinear
from cmlearn.models.mlp import MLP

__all__ = [
    "BodyHead",
    "ConvNet",
    "Cooperative",
    "GraphEncoder",
    "MLP",
    "TaskLinear",
    "build_colearner",
    "normalized_adjacency",
]
