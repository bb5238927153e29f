"""The application on top of ``cmlearn.core``: configuration and presets, datasets on disk,
building a learner from a configuration, run folders, training, evaluation, comparison,
analysis and plots, distributed training, benchmarks and the ``cmlearn`` command."""
