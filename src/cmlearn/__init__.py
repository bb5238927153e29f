"""cmlearn: Cooperative Meta-Learning (CML) on a functional torch.func core."""

__version__ = "0.1.0"


class CmlearnError(Exception):
    """A user-facing error: the CLI prints its message on one line and exits non-zero."""


class Interrupted(CmlearnError):
    """Training stopped on request (Ctrl-C, SIGTERM); the checkpoint holds every step done."""
