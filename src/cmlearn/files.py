"""Atomic file writes: a reader (or a resumed run) never sees a half-written file."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from cmlearn import CmlearnError


def atomic_write(path: Path, write) -> None:
    """Call ``write(file)`` on a temporary file beside ``path``, fsync, then rename over it.

    On any failure the temporary file is removed and ``path`` keeps its previous content; an
    ``OSError`` (disk full, unwritable folder) becomes a one-line ``CmlearnError``.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise CmlearnError(f"cannot write {path}: {err.strerror or err}") from None
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes 0600; a cache is for every user
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        raise CmlearnError(f"cannot write {path}: {err.strerror or err}") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_save(obj: object, path: Path) -> None:
    """``torch.save`` ``obj`` to ``path`` atomically."""
    atomic_write(path, lambda f: torch.save(obj, f))


def atomic_text(text: str, path: Path) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))
