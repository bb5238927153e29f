"""Task batches and task samplers (seeded, reproducible)."""

from cmlearn.tasks.batch import TaskBatch, task_seed
from cmlearn.tasks.sinusoid import SinusoidFamily

__all__ = ["TaskBatch", "SinusoidFamily", "task_seed"]
