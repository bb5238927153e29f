"""Task batches and samplers that index a pool (seeded, reproducible).

Importing this package registers the samplers (``cmlearn.core.registry.SAMPLERS``) and the
synthetic sinusoid family (``DATASETS``).
"""

from cmlearn.core.tasks import classification, nodes  # noqa: F401  (registration)
from cmlearn.core.tasks.batch import TaskBatch, TaskSource, generator, task_seed
from cmlearn.core.tasks.classification import ClassificationSource
from cmlearn.core.tasks.nodes import NodeTaskSource
from cmlearn.core.tasks.sinusoid import SinusoidFamily, SinusoidSource

__all__ = [
    "ClassificationSource",
    "NodeTaskSource",
    "SinusoidFamily",
    "SinusoidSource",
    "TaskBatch",
    "TaskSource",
    "generator",
    "task_seed",
]
