"""Atomic file writes: a reader (or a resumed run) never sees a half-written file."""

from __future__ import annotations

import io
import os
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import torch

from cmlearn.core.errors import CmlearnError

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


@contextmanager
def _protected() -> Iterator[None]:
    """Mark a write in progress: a second Ctrl-C waits for it (``writing``)."""
    global _writing
    _writing += 1
    try:
        yield
    finally:
        _writing -= 1


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary file beside ``path`` for the block to write by any means (a memory map, a
    stream); once the block ends without error it is fsynced and renamed over ``path``.

    On any failure the temporary file is removed and ``path`` keeps its previous content; an
    ``OSError`` (disk full, unwritable folder) becomes a one-line ``CmlearnError``. Only the
    fsync and rename count as a write in progress: the block may be a long decode.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as err:
        raise CmlearnError(f"cannot write {path}: {err.strerror or err}") from None
    tmp = Path(name)
    try:
        yield tmp  # mkstemp's 0600: the owner may write whatever the umask
        with _protected():
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)  # a cache is for every user
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise CmlearnError(f"cannot write {path}: {err.strerror or err}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Call ``write(file)`` on a temporary file beside ``path``, then rename it over ``path``
    (``atomic_path``'s guarantees); the whole write counts as one in progress."""
    with _protected(), atomic_path(path) as tmp, open(tmp, "wb") as f:
        write(f)


def atomic_save(obj: object, path: Path) -> None:
    """``torch.save`` ``obj`` to ``path`` atomically.

    Serialised in memory first: torch's writer turns a failing ``write`` (disk full) into an
    opaque ``RuntimeError``, while a plain file write reports the ``OSError`` itself."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write(path, lambda f: f.write(buffer.getbuffer()))


def damage(path: Path) -> str | None:
    """Why the tensor file ``path`` is damaged, or None when every record checks.

    ``torch.save`` writes a zip archive whose records carry CRC-32s that ``torch.load`` never
    checks: overwritten bytes inside a tensor load as wrong numbers. Reading every record
    through ``zipfile`` checks each CRC (and the archive's structure), so a file changed after
    cmlearn wrote it is caught before it is loaded. A file truncated or overwritten so that it
    is no archive at all is caught too; what the CRCs cannot catch is a file rewritten whole
    with valid CRCs (by another program that writes tensor files)."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError) as err:
        return f"not an intact tensor archive ({str(err).rstrip('.') or type(err).__name__})"
    except OSError as err:
        return f"unreadable ({err.strerror or err})"
    if bad is not None:
        return f"record {bad} fails its CRC-32 check (the file was changed after it was written)"
    return None


def atomic_text(text: str, path: Path) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))
