"""Readers of the standard on-disk formats → in-memory pools and graphs; checksummed caches.

Importing this package registers every on-disk dataset (``cmlearn.core.registry.DATASETS``):
Omniglot, the RGB few-shot image datasets (miniImageNet, tieredImageNet, CIFAR-FS, FC100,
VGG Flower, CUB) and the graphs; synthetic task families (sinusoids) register in
``cmlearn.core.tasks``. ``catalog`` lists, checks and downloads those registered with a
catalog entry (``about.Entry``).
"""

# isort: off
# registration, in the order ``cmlearn data list`` lists them (the registry keeps it)
from cmlearn.app.data import omniglot  # noqa: F401
from cmlearn.app.data import miniimagenet  # noqa: F401
from cmlearn.app.data import tieredimagenet  # noqa: F401
from cmlearn.app.data import cifar  # noqa: F401
from cmlearn.app.data import flower  # noqa: F401
from cmlearn.app.data import cub  # noqa: F401
from cmlearn.app.data import graphs  # noqa: F401

# isort: on
from cmlearn.app.data.graphs import Graph, NodeDataset
from cmlearn.core.tasks.pool import ClassDataset, ClassPool, ClassSplit

__all__ = ["ClassDataset", "ClassPool", "ClassSplit", "Graph", "NodeDataset"]
