"""Task batches and task samplers (seeded, reproducible)."""

from cmlearn.tasks.batch import TaskBatch, TaskSource, task_seed
from cmlearn.tasks.sinusoid import SinusoidFamily, SinusoidSource

__all__ = ["SinusoidFamily", "SinusoidSource", "TaskBatch", "TaskSource", "task_seed"]
