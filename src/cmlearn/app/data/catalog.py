"""The known datasets: where each goes, what it should hold, and how to download it.

``list_datasets`` says which are present, complete and cached; ``check_dataset`` verifies the
files' checksums and the class / image counts of every split against the published ones;
``fetch_dataset`` downloads what has a stable public URL. A download goes to a temporary
file beside its destination, is verified against its MD5 (the checksums torchvision and
torchmeta use), and is unpacked into a temporary folder whose entries are then renamed into
place: a failed download, a checksum mismatch or a damaged archive leaves nothing behind.
miniImageNet and tieredImageNet have no licence-clean public URL; their entries say how to get
them (also ``docs/datasets.md``).

What the catalog knows of a dataset (an ``about.Entry``) is registered with its reader:
``DATASETS.register(name, options, help, catalog=entry)`` in the reader's module; every
registered dataset with such an entry is listed here (``catalog_entries``), in the order
they registered (``cmlearn.app.data`` imports the readers in the order they are listed).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from cmlearn.app.data import graphs  # the package registers every reader first
from cmlearn.app.data.about import Download, Entry, KnownFile  # noqa: F401  (re-exported)
from cmlearn.app.data.images import SPLITS, one_line
from cmlearn.app.progress import Progress
from cmlearn.core.errors import CmlearnError
from cmlearn.core.registry import DATASETS

BLOCK = 1 << 20


def catalog_entries() -> dict[str, Entry]:
    """Every registered dataset that has a catalog entry (``DATASETS.register(...,
    catalog=...)``), in the order they registered; read from the registry at each call."""
    return {n: e.catalog for n, e in DATASETS.entries.items() if e.catalog is not None}


def get(name: str) -> Entry:
    entries = catalog_entries()
    if name not in entries:
        raise CmlearnError(f"unknown dataset {name!r}; choose from {', '.join(entries)}")
    return entries[name]


# --- list -----------------------------------------------------------------------------------


def list_datasets(root: Path, cache_dir: Path) -> list[dict]:
    """One row per known dataset: ``present`` (its folder exists), ``valid`` (every file the
    loader needs is there; nothing is read), ``cached`` (a processed cache exists), ``where``,
    ``download`` (automatic or manual) and ``problem`` (why it is not valid)."""
    rows = []
    for entry in catalog_entries().values():
        where = entry.where(root)
        problem = None
        try:
            entry.locate(Path(root))
        except CmlearnError as err:
            problem = str(err)
        cache = Path(cache_dir)
        cached = cache.is_dir() and any(cache.glob(f"{entry.cache}*")) if entry.cache else False
        rows.append(
            {
                "name": entry.name,
                "title": entry.title,
                "where": str(where),
                "present": where.exists() and (entry.unit != "nodes" or _any_file(entry, root)),
                "valid": problem is None,
                "cached": bool(cached),
                "download": "automatic" if entry.downloads else "manual",
                "problem": problem,
                "domain": entry.domain,
            }
        )
    return rows


def _any_file(entry: Entry, root: Path) -> bool:
    """Whether any file of graph ``entry`` is there (graphs share their folder)."""
    return any(p.exists() for p in graphs.graph_paths(graphs.GRAPHS[entry.name], Path(root)))


# --- check ----------------------------------------------------------------------------------


def digests(path: Path) -> tuple[str, str]:
    """MD5 and SHA-256 of a file, in one pass."""
    md5, sha = hashlib.md5(usedforsecurity=False), hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(BLOCK):
            md5.update(chunk)
            sha.update(chunk)
    return md5.hexdigest(), sha.hexdigest()


def check_dataset(
    name: str, root: Path, cache_dir: Path | None = None, checksums: bool = True
) -> dict:
    """Checksums of the known files (unless ``checksums=False``: a repacked copy of the same
    images differs byte-wise) and class / image (node) counts of every split (the dataset is
    loaded with its default options, building its cache if needed). Returns the report; a
    count that differs from the known one is a one-line ``CmlearnError``. A checksum that
    differs while every count matches (a repacked archive of the same files) is a warning
    in the report's ``warnings``, not an error."""
    from cmlearn.app.runtime import default_cache

    entry = get(name)
    root = Path(root)
    entry.locate(root)
    problems, files = [], []
    for known in entry.files if checksums else ():
        path = root / known.path
        try:
            md5, sha = digests(path)
        except OSError as err:
            raise CmlearnError(f"cannot read {path}: {err.strerror or err}") from None
        files.append({"path": str(path), "md5": md5, "sha256": sha, "ok": md5 == known.md5})
        if md5 != known.md5:
            problems.append(f"{known.path} has MD5 {md5}, expected {known.md5}")
    cache = Path(cache_dir) if cache_dir else default_cache()
    splits, total = _split_counts(name, entry, root, cache)
    counts = []
    for i, (split, found) in enumerate(splits.items()):
        if entry.classes is not None and found["classes"] != entry.classes[i]:
            counts.append(f"{split} has {found['classes']} classes, expected {entry.classes[i]}")
        if entry.images is not None and found["images"] != entry.images[i]:
            counts.append(f"{split} has {found['images']} images, expected {entry.images[i]}")
    if entry.total is not None and total != entry.total:
        where = "the splits hold" if splits else "the graph has"
        counts.append(f"{where} {total} {entry.unit}, expected {entry.total}")
    if counts:
        raise CmlearnError(
            f"{name} in {entry.where(root)} is not the known dataset: "
            f"{'; '.join(problems + counts)}"
        )
    warnings = [
        f"{p}; every class and {entry.unit[:-1]} count matches, so it is taken as a repacked "
        "archive of the same files"
        for p in problems
    ]
    return {
        "name": name,
        "where": str(entry.where(root)),
        "files": files,
        "splits": splits,
        entry.unit: total,
        "warnings": warnings,
    }


def _split_counts(name: str, entry: Entry, root: Path, cache: Path) -> tuple[dict, int]:
    """Classes and images (nodes) per split of the dataset as its reader loads it, and the
    total; a graph without a standard split reports no splits and its node count."""
    if entry.unit == "nodes" and entry.classes is None:
        graph = graphs.read_graph(name, root, cache)
        return {}, int(graph.labels.shape[0])
    build = DATASETS.get(name)
    data = build.build(build.options(), root, cache)
    splits = {}
    for split in SPLITS:
        if entry.unit == "nodes":
            classes, counts = data.splits[split], data.counts
        else:
            classes, counts = data.splits[split].classes, data.pool.counts
        splits[split] = {"classes": len(classes), entry.unit: int(counts[classes].sum())}
    return splits, sum(s[entry.unit] for s in splits.values())


# --- fetch ----------------------------------------------------------------------------------


def fetch_dataset(
    name: str, root: Path, url_override: str | None = None, progress: bool = True
) -> list[dict]:
    """Download (and unpack) what ``name`` needs into ``root``; files already in place are
    skipped. ``url_override``: a URL ending in ``/`` is a mirror folder holding the files
    under their usual names; any other URL is the file itself (datasets of one file only).
    Returns one row per download (``file``, ``url``, ``path``, ``status``)."""
    entry = get(name)
    if not entry.downloads:
        raise CmlearnError(f"{name} cannot be downloaded automatically: {entry.manual}")
    if url_override and not url_override.endswith("/") and len(entry.downloads) > 1:
        raise CmlearnError(
            f"{name} needs {len(entry.downloads)} files; give --url a folder URL ending in '/'"
        )
    root = Path(root)
    done = []
    for item in entry.downloads:
        target = root / item.gives
        url = item.url
        if url_override:
            url = url_override + item.file if url_override.endswith("/") else url_override
        if target.exists():
            done.append({"file": item.file, "url": url, "path": str(target), "status": "present"})
            continue
        _fetch(item, url, root, progress)
        done.append({"file": item.file, "url": url, "path": str(target), "status": "fetched"})
    return done


def _fetch(item: Download, url: str, root: Path, progress: bool) -> None:
    into = root / item.into
    made = [d for d in (into, *into.parents) if not d.exists()]  # removed again on failure
    try:
        into.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{item.file}.", suffix=".part", dir=into)
    except OSError as err:
        raise CmlearnError(f"cannot write in {into}: {err.strerror or err}") from None
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            md5 = _download(url, out, f"fetching {item.file}", progress)
        if md5 != item.md5:
            raise CmlearnError(
                f"{item.file} from {url} has MD5 {md5}, expected {item.md5}; nothing was kept"
            )
        if item.unpack:
            _unpack(tmp, into, root / item.gives, item.file)
        else:
            os.replace(tmp, into / item.file)
    except BaseException:
        tmp.unlink(missing_ok=True)
        for d in made:  # innermost first; only the empty folders this call created
            try:
                d.rmdir()
            except OSError:
                break
        raise
    finally:
        tmp.unlink(missing_ok=True)


def _download(url: str, out, desc: str, progress: bool) -> str:
    md5 = hashlib.md5(usedforsecurity=False)
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            total = int(response.headers.get("Content-Length") or 0)
            bar = Progress(total, 0, desc, enabled=progress and total > 0)
            try:
                while chunk := response.read(BLOCK):
                    out.write(chunk)
                    md5.update(chunk)
                    bar.update(len(chunk))
            finally:
                bar.close()
    except (urllib.error.URLError, OSError, ValueError) as err:
        reason = getattr(err, "reason", None) or err
        raise CmlearnError(f"cannot download {url}: {one_line(Exception(reason))}") from None
    return md5.hexdigest()


def _unpack(archive: Path, into: Path, gives: Path, name: str) -> None:
    """Unpack into a temporary folder beside ``into``, then rename its entries into place."""
    staging = Path(tempfile.mkdtemp(prefix=".unpack-", dir=into))
    try:
        try:
            if tarfile.is_tarfile(archive):
                with tarfile.open(archive) as tar:
                    tar.extractall(staging, filter="data")
            elif zipfile.is_zipfile(archive):
                with zipfile.ZipFile(archive) as z:
                    for member in z.namelist():
                        if member.startswith(("/", "\\")) or ".." in Path(member).parts:
                            raise CmlearnError(f"{name} holds an unsafe path {member!r}")
                    z.extractall(staging)
            else:
                raise CmlearnError(f"{name} is neither a tar nor a zip archive")
        except (tarfile.TarError, zipfile.BadZipFile, OSError, EOFError) as err:
            raise CmlearnError(f"{name} is corrupt or truncated ({one_line(err)})") from None
        if not (staging / gives.relative_to(into)).exists():
            raise CmlearnError(f"{name} does not contain {gives.relative_to(into)}")
        entries = sorted(staging.iterdir())
        clash = [e.name for e in entries if (into / e.name).exists()]
        if clash:
            raise CmlearnError(f"{into / clash[0]} already exists; move it away to fetch {name}")
        for e in entries:
            os.replace(e, into / e.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
