"""Backbones split into a body (ψ) and a head (θ), co-learner heads, and their pairing."""

from cmlearn.core.models.colearner import build_colearner
from cmlearn.core.models.conv import ConvNet
from cmlearn.core.models.cooperative import BodyHead, Cooperative, parameter_counts
from cmlearn.core.models.graph import GCNEncoder, GraphModel
from cmlearn.core.models.layers import TaskLinear
from cmlearn.core.models.mlp import MLP
from cmlearn.core.models.resnet import ResNet12

__all__ = [
    "BodyHead",
    "ConvNet",
    "Cooperative",
    "GCNEncoder",
    "GraphModel",
    "MLP",
    "ResNet12",
    "TaskLinear",
    "build_colearner",
    "parameter_counts",
]
