"""The known datasets: where each goes, what it should hold, and how to download it.

``list_datasets`` says which are present, complete and cached; ``check_dataset`` verifies the
files' checksums and the class / image counts of every split against the published ones;
``fetch_dataset`` downloads what has a stable public URL. A download goes to a temporary
file beside its destination, is verified against its MD5 (the checksums torchvision and
torchmeta use), and is unpacked into a temporary folder whose entries are then renamed into
place: a failed download, a checksum mismatch or a damaged archive leaves nothing behind.
miniImageNet and tieredImageNet have no licence-clean public URL; their entries say how to get
them (also ``docs/datasets.md``).
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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cmlearn.app.data import cifar, cub, flower, graphs, miniimagenet, omniglot, tieredimagenet
from cmlearn.app.data.images import SPLITS, need, one_line
from cmlearn.app.progress import Progress
from cmlearn.core.errors import CmlearnError
from cmlearn.core.registry import DATASETS

BLOCK = 1 << 20


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


CIFAR = Download(
    "cifar-100-python.tar.gz",
    "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
    "eb9058c3a382ffc7106e4002c42a8d85",
    ".",
    "cifar-100-python",
    unpack=True,
)
CIFAR_FILES = (
    KnownFile("cifar-100-python/train", "16019d7e3df5f24257cddd939b257f8d"),
    KnownFile("cifar-100-python/test", "f0ef6b0ae62326f3e7ffdfab6717acfc"),
    KnownFile("cifar-100-python/meta", "7973b15100ade9c7d40fb424638fde48"),
)
OMNIGLOT_MD5 = {
    "background": "68d2efa1b9178cc56df9314c21c6e718",
    "evaluation": "6b91aef0f799c5bb55b94e3f2daec811",
}
FLOWER_URL = "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/"
MINI_MANUAL = (
    "no licence-clean public download (ImageNet terms). Put one layout in "
    "<data root>/miniimagenet/: the pickles mini-imagenet-cache-{train,val,test}.pkl "
    "(renmengye/few-shot-ssl-public; learn2learn fetches them from "
    "https://zenodo.org/record/7978538), or Ravi & Larochelle's images/ with "
    "{train,val,test}.csv, or {train,val,test}/<wnid>/*.jpg"
)
TIERED_MANUAL = (
    "no licence-clean public download (ImageNet terms). Unpack tiered-imagenet.tar "
    "(renmengye/few-shot-ssl-public, as torchmeta and learn2learn download it) or MetaOptNet's "
    "npz copy into <data root>/tiered_imagenet/: {train,val,test}_labels.pkl with "
    "{train,val,test}_images.npz or {train,val,test}_images_png.pkl"
)


def _omniglot_locate(root: Path) -> list[Path]:
    hint = "run 'cmlearn data fetch omniglot'"
    return [need(p, "Omniglot zip", hint) for p in omniglot.zip_paths(root)]


CATALOG: dict[str, Entry] = {
    "omniglot": Entry(
        "omniglot",
        "Omniglot (Lake et al. 2015), Vinyals split ×4 rotations",
        "omniglot",
        _omniglot_locate,
        (4112, 688, 1692),
        (4112 * 20, 688 * 20, 1692 * 20),
        files=tuple(KnownFile(f"omniglot/images_{s}.zip", md5) for s, md5 in OMNIGLOT_MD5.items()),
        downloads=tuple(
            Download(
                f"images_{s}.zip",
                omniglot.URL.format(s),
                md5,
                "omniglot",
                f"omniglot/images_{s}.zip",
            )
            for s, md5 in OMNIGLOT_MD5.items()
        ),
        cache="omniglot",
    ),
    "miniimagenet": Entry(
        "miniimagenet",
        "miniImageNet (Vinyals et al. 2016, Ravi & Larochelle split)",
        "miniimagenet",
        miniimagenet.locate,
        (64, 16, 20),
        (38_400, 9_600, 12_000),
        manual=MINI_MANUAL,
        cache="miniimagenet",
    ),
    "tieredimagenet": Entry(
        "tieredimagenet",
        "tieredImageNet (Ren et al. 2018)",
        "tiered_imagenet",
        tieredimagenet.locate,
        (351, 97, 160),
        (448_695, 124_261, 206_209),
        manual=TIERED_MANUAL,
        cache="tieredimagenet",
        other_folders=tieredimagenet.FOLDERS[1:],
    ),
    "cifarfs": Entry(
        "cifarfs",
        "CIFAR-FS (Bertinetto et al. 2019) from CIFAR-100",
        "cifar-100-python",
        lambda root: cifar.locate(root, "cifarfs"),
        (64, 16, 20),
        (38_400, 9_600, 12_000),
        files=CIFAR_FILES,
        downloads=(CIFAR,),
        cache="cifar100",
    ),
    "fc100": Entry(
        "fc100",
        "FC100 (Oreshkin et al. 2018) from CIFAR-100",
        "cifar-100-python",
        lambda root: cifar.locate(root, "fc100"),
        (60, 20, 20),
        (36_000, 12_000, 12_000),
        files=CIFAR_FILES,
        downloads=(CIFAR,),
        cache="cifar100",
    ),
    "flower": Entry(
        "flower",
        "VGG Flower 102 (Nilsback & Zisserman 2008), Meta-Dataset split",
        "vgg_flower",
        flower.locate,
        (71, 15, 16),
        total=8_189,
        files=(KnownFile("vgg_flower/imagelabels.mat", "e0620be6f572b9609742df49c70aed4d"),),
        downloads=(
            Download(
                "102flowers.tgz",
                FLOWER_URL + "102flowers.tgz",
                "52808999861908f626f3c1f4e79d11fa",
                "vgg_flower",
                "vgg_flower/jpg",
                unpack=True,
            ),
            Download(
                "imagelabels.mat",
                FLOWER_URL + "imagelabels.mat",
                "e0620be6f572b9609742df49c70aed4d",
                "vgg_flower",
                "vgg_flower/imagelabels.mat",
            ),
        ),
        cache="flower",
    ),
    "cub": Entry(
        "cub",
        "CUB-200-2011 (Wah et al. 2011), Chen et al. split",
        "cub",
        cub.locate,
        (100, 50, 50),
        total=11_788,
        downloads=(
            Download(
                "CUB_200_2011.tgz",
                "https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz",
                "97eceeb196236b17998738112f37df78",
                "cub",
                "cub/CUB_200_2011",
                unpack=True,
            ),
        ),
        cache="cub",
    ),
}


def _graph_entry(name: str, spec: graphs.GraphSpec) -> Entry:
    """A graph's catalog entry, from the graph reader's own table (``graphs.GRAPHS``): its
    files, published size and standard class split. The files are downloaded by hand: no
    checksums of them are recorded here to verify a download against."""
    paths = graphs.graph_paths(spec, Path("."))
    urls = ", ".join(graphs.graph_url(spec, p) for p in paths)
    return Entry(
        name,
        f"{spec.title} graph ({spec.nodes:,} nodes, {spec.n_classes} classes)",
        paths[0].parent.name,
        lambda root: graphs.locate_graph(name, root),
        spec.classes,
        total=spec.nodes,
        manual=f"download {urls} into <data root>/{paths[0].parent.name}/",
        cache=f"graph-{name}-",
        unit="nodes",
        domain="graphs",
    )


# every dataset a preset reads from disk: the image datasets above and the graphs
CATALOG |= {name: _graph_entry(name, spec) for name, spec in graphs.GRAPHS.items()}


def get(name: str) -> Entry:
    if name not in CATALOG:
        raise CmlearnError(f"unknown dataset {name!r}; choose from {', '.join(CATALOG)}")
    return CATALOG[name]


# --- list -----------------------------------------------------------------------------------


def list_datasets(root: Path, cache_dir: Path) -> list[dict]:
    """One row per known dataset: ``present`` (its folder exists), ``valid`` (every file the
    loader needs is there; nothing is read), ``cached`` (a processed cache exists), ``where``,
    ``download`` (automatic or manual) and ``problem`` (why it is not valid)."""
    rows = []
    for entry in CATALOG.values():
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
