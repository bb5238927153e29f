"""Backbones split into a body (ψ) and a head (θ), co-learner heads, and their pairing."""

from cmlearn.models.colearner import build_colearner
from cmlearn.models.conv import ConvNet
from cmlearn.models.cooperative import BodyHead, Cooperative, parameter_counts
from cmlearn.models.graph import GCNEncoder, GraphModel
from cmlearn.models.layers import TaskLinear
from cmlearn.models.mlp import MLP
from cmlearn.models.resnet import ResNet12

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
