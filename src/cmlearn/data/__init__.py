"""Readers of the standard on-disk formats → in-memory pools and graphs; checksummed caches.

Importing this package registers every on-disk dataset, Omniglot and the graphs
(``cmlearn.registry.DATASETS``); synthetic task families (sinusoids) register in
``cmlearn.tasks``.
"""

from cmlearn.data import graphs, omniglot  # noqa: F401  (registration)
from cmlearn.data.graphs import Graph, NodeDataset
from cmlearn.data.pool import ClassDataset, ClassPool, ClassSplit

__all__ = ["ClassDataset", "ClassPool", "ClassSplit", "Graph", "NodeDataset"]
