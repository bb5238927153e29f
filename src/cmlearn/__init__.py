"""cmlearn: Cooperative Meta-Learning (CML) on a functional torch.func core."""

from cmlearn.core.errors import CmlearnError, Interrupted

__version__ = "0.1.0"

__all__ = ["CmlearnError", "Interrupted"]
