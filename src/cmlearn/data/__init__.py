"""Readers of the standard on-disk formats → in-memory pools and graphs; checksummed caches.

Importing this package registers every on-disk dataset (``cmlearn.registry.DATASETS``):
Omniglot, the RGB few-shot image datasets (miniImageNet, tieredImageNet, CIFAR-FS, FC100,
VGG Flower, CUB) and the graphs; synthetic task families (sinusoids) register in
``cmlearn.tasks``. ``catalog`` lists, checks and downloads them.
"""

from cmlearn.data import (  # noqa: F401  (registration)
    cifar,
    cub,
    flower,
    graphs,
    miniimagenet,
    omniglot,
    tieredimagenet,
)
from cmlearn.data.graphs import Graph, NodeDataset
from cmlearn.data.pool import ClassDataset, ClassPool, ClassSplit

__all__ = ["ClassDataset", "ClassPool", "ClassSplit", "Graph", "NodeDataset"]
