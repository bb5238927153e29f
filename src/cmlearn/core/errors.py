"""The two exceptions every layer raises; ``cmlearn`` re-exports them."""


class CmlearnError(Exception):
    """A user-facing error: the CLI prints its message on one line and exits non-zero."""


class Interrupted(CmlearnError):
    """Training stopped on request (Ctrl-C, SIGTERM); the checkpoint holds every step done."""
