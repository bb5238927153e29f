"""What the catalog knows of a dataset read from disk: where it goes, what it should hold, and
how to get it. Each reader passes its ``Entry`` to ``DATASETS.register(..., catalog=...)``
beside its builder; ``catalog`` lists, checks and fetches every registered dataset that has one.
This module imports nothing of the readers, so each of them can import it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Download:
    """One file to fetch: saved as ``into/file`` or, if ``unpack``, unpacked into ``into``;
    ``gives`` (relative to the data root) exists once it is in place."""

    file: str
    url: str
    md5: str
    into: str
    gives: str
    unpack: bool = False


@dataclass(frozen=True)
class KnownFile:
    path: str  # relative to the data root
    md5: str


@dataclass(frozen=True)
class Entry:
    name: str
    title: str
    folder: str  # relative to the data root
    locate: Callable[[Path], object]  # raises CmlearnError unless the files are complete
    classes: tuple[int, int, int] | None  # train / val / test (None: no standard split)
    images: tuple[int, int, int] | None = None  # per split, where published
    total: int | None = None  # images (nodes) over all splits, where only that is known
    files: tuple[KnownFile, ...] = ()
    downloads: tuple[Download, ...] = ()
    manual: str = ""
    cache: str = ""  # cache file name prefix
    other_folders: tuple[str, ...] = ()  # also accepted by the loader
    unit: str = "images"  # what a class holds: images, or a graph's nodes
    domain: str = "images"  # the heading it is listed under

    def where(self, root: Path) -> Path:
        """The folder in use: the first of ``folder``, ``other_folders`` that exists."""
        found = (Path(root) / f for f in (self.folder, *self.other_folders))
        return next((f for f in found if f.exists()), Path(root) / self.folder)
