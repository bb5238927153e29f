"""Task batches and samplers that index a pool (seeded, reproducible).

Importing this package registers the samplers (``cmlearn.registry.SAMPLERS``) and the
synthetic sinusoid family (``DATASETS``).
"""

from cmlearn.tasks import classification, nodes  # noqa: F401  (registration)
from cmlearn.tasks.batch import TaskBatch, TaskSource, generator, task_seed
from cmlearn.tasks.classification import ClassificationSource
from cmlearn.tasks.nodes import NodeTaskSource
from cmlearn.tasks.sinusoid import SinusoidFamily, SinusoidSource

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
