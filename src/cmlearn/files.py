"""Atomic file writes: a reader (or a resumed run) never sees a half-written file."""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

import torch

from cmlearn import CmlearnError

_writing = 0  # atomic writes in progress (a signal handler must not abort one)


def writing() -> bool:
    """True while an atomic write is in progress: a second Ctrl-C waits for it."""
    return _writing > 0


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete temporary files that a killed writer left in ``folder`` (call it only while
    holding the folder's lock, so no live writer owns them)."""
    stale = [p for p in Path(folder).glob(".*.tmp") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def atomic_write(path: Path, write) -> None:
    """Call ``write(file)`` on a temporary file beside ``path``, fsync, then rename over it.

    On any failure the temporary file is removed and ``path`` keeps its previous content; an
    ``OSError`` (disk full, unwritable folder) becomes a one-line ``CmlearnError``.
    """
    global _writing
    path = Path(path)
    _writing += 1
    try:
        _write(path, write)
    finally:
        _writing -= 1


def _write(path: Path, write) -> None:
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
    """``torch.save`` ``obj`` to ``path`` atomically.

    Serialised in memory first: torch's writer turns a failing ``write`` (disk full) into an
    opaque ``RuntimeError``, while a plain file write reports the ``OSError`` itself."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write(path, lambda f: f.write(buffer.getbuffer()))


def atomic_text(text: str, path: Path) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))
