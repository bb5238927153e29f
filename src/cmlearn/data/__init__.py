"""Readers of the standard on-disk formats → in-memory pools; checksummed caches.

Importing this package registers every on-disk dataset (``cmlearn.registry.DATASETS``);
synthetic task families (sinusoids) register in ``cmlearn.tasks``.
"""

from cmlearn.data import omniglot  # noqa: F401  (registration)
from cmlearn.data.pool import ClassDataset, ClassPool, ClassSplit

__all__ = ["ClassDataset", "ClassPool", "ClassSplit"]
