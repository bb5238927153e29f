"""The core: tasks, models and co-learner heads, inner-loop algorithms, CML's controls and
evaluation modes, and the engine that turns a meta-batch into a meta-loss.

It needs PyTorch only (NumPy for the graph models' index plans; SciPy is imported by those
plans when a graph model first runs). Nothing here reads files, parses settings or imports
``cmlearn.app``: the application (configuration, presets, datasets on disk, run folders,
training, evaluation, comparison, analysis, the CLI) is built on top of it.
"""
