"""On-disk caches of processed data: keyed by the source files' checksums, written atomically.

A cache file is a ``torch.save`` of ``{"format": …, "key": …, "payload": …}``. It is written
to a temporary name in the same folder and renamed, so a reader never sees a half-written
file; the key in its name and inside it is the SHA-256 of the sources, so a changed source
builds a new cache instead of reading a stale one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from cmlearn.app.files import atomic_save, damage
from cmlearn.core.errors import CmlearnError

CACHE_FORMAT = 1  # bump when the payload layout changes


def sha256(path: Path, block: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def source_key(paths: Iterable[Path], *extra: object) -> str:
    """One key for a set of source files (their SHA-256s) and processing settings."""
    digest = hashlib.sha256(f"format={CACHE_FORMAT};{extra!r}".encode())
    for path in paths:
        digest.update(sha256(path).encode())
    return digest.hexdigest()[:20]


def cached(cache_dir: Path, name: str, key: str, build: Callable[[], Any]) -> Any:
    """The payload cached as ``name-key.pt`` in ``cache_dir``, built (and saved) if absent."""
    path = Path(cache_dir) / f"{name}-{key}.pt"
    if path.exists():
        problem = damage(path)  # torch.load never checks the archive's CRC-32s
        if problem is not None:
            raise CmlearnError(f"cache {path} is unreadable ({problem}); delete it to rebuild")
        try:
            blob = torch.load(path, weights_only=True)
        except Exception as err:  # a damaged file: torch raises many types
            raise CmlearnError(
                f"cache {path} is unreadable ({type(err).__name__}); delete it to rebuild"
            ) from None
        found = blob.get("format") if isinstance(blob, dict) else "?"
        if found != CACHE_FORMAT or "payload" not in blob:
            raise CmlearnError(
                f"cache {path} was written by another cmlearn version (format {found}, this "
                f"version reads {CACHE_FORMAT}); delete it to rebuild"
            )
        if blob.get("key") != key:
            raise CmlearnError(
                f"cache {path} holds data of other source files (key {blob.get('key')!r}); "
                "delete it to rebuild"
            )
        return blob["payload"]
    payload = build()
    atomic_save({"format": CACHE_FORMAT, "key": key, "payload": payload}, path)
    return payload
