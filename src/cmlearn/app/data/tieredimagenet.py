"""tieredImageNet (Ren et al., ICLR 2018): 608 ImageNet classes under 34 superclasses,
351 / 97 / 160 classes (448,695 / 124,261 / 206,209 images), 84×84 RGB.

No official public download (the ImageNet licence applies). Files go in
``<data root>/tiered_imagenet/`` (or ``tiered-imagenet/``, the name in the tar that torchmeta
and learn2learn download), per split ``{train,val,test}``:

- ``{split}_labels.pkl``: a dict (Python 2 pickle, ``bytes`` keys) with ``label_specific``
  (the class of each image; ``labels`` in MetaOptNet's copy) and ``label_specific_str`` (the
  class names; optional here);
- images, either ``{split}_images.npz`` (``layout=npz``: ``images`` uint8 ``[N, 84, 84, 3]``,
  what ``renmengye/few-shot-ssl-public``'s ``decompress`` writes and MetaOptNet/RFS read) or
  ``{split}_images_png.pkl`` (``layout=png``: a list of PNG-encoded images, the original
  release that torchmeta and learn2learn decode). ``auto`` takes the npz where present.

**Channel order.** The npz files were written from ``cv2.imdecode``, which returns BGR, so
their last axis is B, G, R [inferred from ``compress_tiered_imagenet.py``; MetaOptNet and RFS
feed them to PIL as if RGB]. ``npz_channels=bgr`` (default) flips them to RGB, giving the
pixels torchmeta (and so the CML code) decodes from the PNGs; ``rgb`` keeps them as stored.

**Memory.** The pool is 779,165 × 3 × 84 × 84 bytes = **16.5 GB**, too big to hold in
memory on most machines. It is written once to ``$CMLEARN_CACHE/tieredimagenet-KEY.npy``
(16.5 GB of disk, class by class) and opened memory-mapped (``np.load(mmap_mode='r')``): a
task reads only its own images from the page cache or the disk, so any amount of RAM works
(with less than ~17 GB free, images come from the disk: use an SSD). Building the cache
streams the npz files row by row (little memory); the PNG layout must unpickle one split's
list at once (about 2–7 GB for train). ``--device cuda`` copies the whole pool to the GPU
(16.5 GB of GPU memory). The cache key is the files' names, sizes and modification times
(checksumming ~16 GB on every start would take minutes); ``cmlearn data check
tieredimagenet`` counts classes and images against the known ones.
"""

from __future__ import annotations

import json
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cmlearn.app.data.about import Entry
from cmlearn.app.data.images import (
    PROGRESS_FROM,
    SPLITS,
    ImageOptions,
    Prep,
    decode_all,
    image_dataset,
    make_pool,
    manual_hint,
    need,
    one_line,
    range_splits,
    reading,
    stat_key,
    str_keys,
    text,
    unpickle,
)
from cmlearn.app.files import atomic_path, atomic_text
from cmlearn.app.progress import Progress
from cmlearn.core.errors import CmlearnError
from cmlearn.core.registry import DATASETS, check
from cmlearn.core.tasks.pool import ClassDataset, ClassPool

FOLDERS = ("tiered_imagenet", "tiered-imagenet")
LAYOUTS = ("auto", "npz", "png")
CHANNELS = ("bgr", "rgb")
CACHE_FORMAT = 1
CHUNK_BYTES = 64 << 20  # rows read per step from an npz: about 64 MB


@dataclass(frozen=True)
class TieredOptions(ImageOptions):
    layout: str = "auto"  # auto | npz | png
    npz_channels: str = "bgr"  # the npz files' channel order (bgr: renmengye's decompress)

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.layout in LAYOUTS, f"tieredimagenet layout must be one of {LAYOUTS}")
        check(self.npz_channels in CHANNELS, f"npz_channels must be one of {CHANNELS}")


@dataclass(frozen=True)
class Layout:
    name: str  # npz | png
    base: Path
    labels: dict[str, Path]
    images: dict[str, Path]

    def paths(self) -> list[Path]:
        return [p for s in SPLITS for p in (self.labels[s], self.images[s])]


def locate(root: Path, layout: str = "auto") -> Layout:
    """The files of each split (cheap: names only, nothing is read)."""
    hint = manual_hint("tieredImageNet")
    found = (Path(root) / f for f in FOLDERS if (Path(root) / f).is_dir())
    base = next(found, None) or need(Path(root) / FOLDERS[0], "tieredImageNet folder", hint)
    labels = {s: base / f"{s}_labels.pkl" for s in SPLITS}
    npz = {s: base / f"{s}_images.npz" for s in SPLITS}
    png = {s: base / f"{s}_images_png.pkl" for s in SPLITS}
    if layout == "auto":
        layout = "npz" if all(p.is_file() for p in npz.values()) else "png"
        if layout == "png" and not any(p.is_file() for p in png.values()):
            raise CmlearnError(
                f"no tieredImageNet images in {base}: expected {{train,val,test}}_images.npz "
                "or {train,val,test}_images_png.pkl, with {train,val,test}_labels.pkl"
            )
    images = npz if layout == "npz" else png
    for split in SPLITS:
        need(labels[split], f"tieredImageNet {split} labels", hint)
        need(images[split], f"tieredImageNet {split} images", hint)
    return Layout(layout, base, labels, images)


def read_labels(path: Path) -> tuple[np.ndarray, list[str] | None]:
    """The class id of each image and, where the file has them, the class names."""
    raw = unpickle(path)
    data = str_keys(raw, path, ())
    key = "label_specific" if "label_specific" in data else "labels"
    if key not in data:
        raise CmlearnError(f"{path} has no 'label_specific' (or 'labels') entry")
    try:
        labels = np.asarray(data[key]).astype(np.int64, casting="safe").ravel()
    except (TypeError, ValueError):
        raise CmlearnError(f"{path}: {key} must be integer class ids, one per image") from None
    if labels.size and labels.min() < 0:
        raise CmlearnError(f"{path}: {key} holds negative class ids")
    names = data.get("label_specific_str")
    return labels, None if names is None else [text(n) for n in names]


@dataclass(frozen=True)
class Plan:
    """Where every image of every split goes in the pool (classes back to back)."""

    names: list[str]
    counts: list[int]
    classes: list[int]  # classes per split
    rows: dict[str, np.ndarray]  # split -> pool row of each of its images, in file order

    @property
    def total(self) -> int:
        return sum(self.counts)


def plan(layout: Layout) -> Plan:
    names, counts, classes, rows = [], [], [], {}
    start = 0
    for split in SPLITS:
        ids, split_names = read_labels(layout.labels[split])
        present, per_class = np.unique(ids, return_counts=True)
        for c in present:
            given = split_names is not None and c < len(split_names)
            names.append(split_names[c] if given else f"{split}:{c}")
        counts += per_class.tolist()
        classes.append(len(present))
        order = np.argsort(ids, kind="stable")
        where = np.empty(len(ids), dtype=np.int64)
        where[order] = np.arange(len(ids)) + start
        rows[split] = where
        start += len(ids)
    return Plan(names, counts, classes, rows)


def read_pool(layout: Layout, cache_dir: Path, channels: str) -> tuple[ClassPool, list[int]]:
    """The memory-mapped pool and the class count of each split, built once if absent."""
    try:
        channels = channels if layout.name == "npz" else "rgb"  # PNGs decode to RGB
        key = stat_key(layout.paths(), layout.name, channels, CACHE_FORMAT)
    except OSError as err:
        raise CmlearnError(f"cannot read {err.filename}: {err.strerror or err}") from None
    cache_dir = Path(cache_dir)
    array, meta = cache_dir / f"tieredimagenet-{key}.npy", cache_dir / f"tieredimagenet-{key}.json"
    if not (array.is_file() and meta.is_file()):
        _build(layout, channels, array, meta, key)
    try:
        info = json.loads(meta.read_text())
        images = np.load(array, mmap_mode="r")
    except (OSError, ValueError) as err:
        raise CmlearnError(
            f"cache {array} is unreadable ({one_line(err)}); delete it and {meta.name} to rebuild"
        ) from None
    if (
        info.get("format") != CACHE_FORMAT
        or list(images.shape) != info.get("shape")
        or images.dtype != np.uint8
    ):
        raise CmlearnError(f"cache {array} does not match {meta.name}; delete both to rebuild")
    with warnings.catch_warnings():  # read-only map: the sampler only ever reads (gathers) it
        warnings.simplefilter("ignore", UserWarning)
        tensor = torch.from_numpy(images)
    return make_pool(tensor, torch.tensor(info["counts"]), info["names"]), info["classes"]


def _build(layout: Layout, channels: str, array: Path, meta: Path, key: str) -> None:
    """Write the pool to ``array`` (a temporary file renamed into place), then ``meta``."""
    where = plan(layout)
    size = _image_size(layout)
    shape = (where.total, 3, size, size)
    with atomic_path(array) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
        for split in SPLITS:
            rows, source = where.rows[split], layout.images[split]
            if layout.name == "npz":
                _copy_npz(source, out, rows, flip=channels == "bgr")
            else:
                _decode_png(source, out, rows, size)
        out.flush()
        del out
    info = {
        "format": CACHE_FORMAT,
        "key": key,
        "shape": list(shape),
        "counts": where.counts,
        "names": where.names,
        "classes": where.classes,
    }
    atomic_text(json.dumps(info), meta)


def _npz_header(f) -> tuple[tuple[int, ...], bool, np.dtype]:
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(f)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(f)
    raise ValueError(f"unsupported .npy format version {version}")


def _image_size(layout: Layout) -> int:
    """The side of the images (84 in the release), from the first split's file."""
    path = layout.images[SPLITS[0]]
    if layout.name == "png":
        return 84
    with reading(path), zipfile.ZipFile(path) as archive, archive.open("images.npy") as f:
        shape, _, _ = _npz_header(f)
    return int(shape[1]) if len(shape) == 4 else 84


def _copy_npz(path: Path, out: np.ndarray, rows: np.ndarray, flip: bool) -> None:
    """Stream ``images`` of an npz into ``out[rows]`` (HWC → CHW, BGR → RGB if ``flip``),
    a few thousand rows at a time: the array is never held whole in memory."""
    with reading(path), zipfile.ZipFile(path) as archive:
        if "images.npy" not in archive.namelist():
            raise CmlearnError(f"{path} has no 'images' array")
        with archive.open("images.npy") as f:
            shape, fortran, dtype = _npz_header(f)
            size = out.shape[-1]
            if dtype != np.uint8 or fortran or tuple(shape[1:]) != (size, size, 3):
                raise CmlearnError(
                    f"{path}: images is {dtype} {list(shape)}, expected uint8 "
                    f"[N, {size}, {size}, 3] like the other splits"
                )
            if shape[0] != len(rows):
                raise CmlearnError(
                    f"{path}: {shape[0]} images but its labels file lists {len(rows)}"
                )
            per_row = size * size * 3
            step = max(1, CHUNK_BYTES // per_row)
            bar = Progress(len(rows), 0, f"copying {path.name}", len(rows) >= PROGRESS_FROM)
            try:
                for start in range(0, len(rows), step):
                    n = min(step, len(rows) - start)
                    buf = _read_exact(f, n * per_row, path)
                    chunk = np.frombuffer(buf, dtype=np.uint8).reshape(n, size, size, 3)
                    if flip:
                        chunk = chunk[..., ::-1]
                    out[rows[start : start + n]] = chunk.transpose(0, 3, 1, 2)
                    bar.update(n)
            finally:
                bar.close()


def _read_exact(f, n: int, path: Path) -> bytes:
    parts, left = [], n
    while left:
        part = f.read(left)
        if not part:
            raise CmlearnError(f"{path} is truncated (images end early)")
        parts.append(part)
        left -= len(part)
    return b"".join(parts)


def _decode_png(path: Path, out: np.ndarray, rows: np.ndarray, size: int) -> None:
    items = unpickle(path)
    if not isinstance(items, list | tuple):
        raise CmlearnError(f"{path} holds a {type(items).__name__}, expected a list of PNGs")
    if len(items) != len(rows):
        raise CmlearnError(f"{path}: {len(items)} images but its labels file lists {len(rows)}")
    sources = [
        i if isinstance(i, bytes) else np.asarray(i, dtype=np.uint8).tobytes() for i in items
    ]
    del items
    labels = [f"{path.name}[{i}]" for i in range(len(sources))]
    decode_all(sources, Prep(size), f"decoding {path.name}", out, rows, labels)


# --- registration -----------------------------------------------------------------------------

MANUAL = (
    "no licence-clean public download (ImageNet terms). Unpack tiered-imagenet.tar "
    "(renmengye/few-shot-ssl-public, as torchmeta and learn2learn download it) or MetaOptNet's "
    "npz copy into <data root>/tiered_imagenet/: {train,val,test}_labels.pkl with "
    "{train,val,test}_images.npz or {train,val,test}_images_png.pkl"
)
ABOUT = Entry(
    "tieredimagenet",
    "tieredImageNet (Ren et al. 2018)",
    "tiered_imagenet",
    locate,
    (351, 97, 160),
    (448_695, 124_261, 206_209),
    manual=MANUAL,
    cache="tieredimagenet",
    other_folders=FOLDERS[1:],
)


@DATASETS.register(
    "tieredimagenet",
    TieredOptions,
    "tieredImageNet, 351/97/160 classes, memory-mapped (16.5 GB cache; no public download)",
    catalog=ABOUT,
)
def tieredimagenet(options: TieredOptions, root: Path, cache_dir: Path) -> ClassDataset:
    layout = locate(root, options.layout)
    pool, classes = read_pool(layout, cache_dir, options.npz_channels)
    return image_dataset("tieredimagenet", pool, range_splits(classes), options.normalize)
