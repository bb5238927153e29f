"""Readers of the standard on-disk formats → in-memory pools and graphs; checksummed caches.

Importing this package registers every on-disk dataset (``cmlearn.core.registry.DATASETS``):
Omniglot, the RGB few-shot image datasets (miniImageNet, tieredImageNet, CIFAR-FS, FC100,
VGG Flower, CUB) and the graphs; synthetic task families (sinusoids) register in
``cmlearn.core.tasks``. ``catalog`` lists, checks and downloads them.
"""

from cmlearn.app.data import (  # noqa: F401  (registration)
    cifar,
    cub,
    flower,
    graphs,
    miniimagenet,
    omniglot,
    tieredimagenet,
)
from cmlearn.app.data.graphs import Graph, NodeDataset
from cmlearn.core.tasks.pool import ClassDataset, ClassPool, ClassSplit

__all__ = ["ClassDataset", "ClassPool", "ClassSplit", "Graph", "NodeDataset"]
