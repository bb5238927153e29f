"""What every RGB few-shot dataset shares: decoding, resizing, pools, splits, caches, errors.

Each dataset module (``miniimagenet``, ``cifar``, ``flower``, ``cub``, ``tieredimagenet``)
only knows its own files; the steps they have in common live here, once:

- **Decoding** (``Prep``): Pillow opens the file, converts it to RGB, and resizes it. The
  default resampling is **bilinear**, what torchvision's ``Resize`` does on a PIL image and so
  what the BOIL and CML code (torchmeta transforms) apply; ``bicubic`` (Pillow's default
  filter, used by BOIL's VGG Flower script) and ``lanczos`` (Finn's miniImageNet
  ``proc_images.py``) are options. An image already at the target size is not resampled.
  ``Prep(short=...)`` is torchvision's ``Resize(short)`` (shorter side to ``short``, the
  other side truncated in proportion) then ``CenterCrop(size)`` with its rounding.
- **Pools**: images of each class back to back in one uint8 ``[n, 3, S, S]`` array
  (``ClassPool``), built once and cached by the sources' checksums (``cache.cached``).
- **Splits**: class names (or ids) of the packaged split files (``splits/*.json``, each
  naming its source) mapped to pool classes; a name not in the data is a one-line error.
- **Preprocessing** (``normalize``): ``none`` (default: the paper's code, pixels / 255, no
  normalisation, no augmentation) or ``imagenet`` (mean 0.485, 0.456, 0.406; std 0.229,
  0.224, 0.225, as MAML++), applied by the sampler after / 255 (``ClassDataset.mean/std``).
- **Pickles** are read by an unpickler that rebuilds only arrays, lists, dicts and strings
  (unpickling anything else could run code), with ``encoding='bytes'`` so Python 2 pickles
  (CIFAR-100, miniImageNet and tieredImageNet caches) load; ``str_keys`` accepts their
  ``b'data'`` keys and the ``'data'`` keys of a Python 3 copy alike.
"""

from __future__ import annotations

import codecs
import hashlib
import io
import json
import os
import pickle
from collections import OrderedDict, defaultdict
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cmlearn.app.data.cache import source_key
from cmlearn.app.progress import Progress
from cmlearn.core.errors import CmlearnError
from cmlearn.core.registry import check
from cmlearn.core.tasks.pool import ClassDataset, ClassPool, ClassSplit

SPLITS = ("train", "val", "test")
NORMALIZE: dict[str, tuple[tuple[float, ...], tuple[float, ...]] | None] = {
    "none": None,
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
RESAMPLE = ("bilinear", "bicubic", "lanczos")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
PACKAGED_SPLITS = Path(__file__).parent / "splits"
DOCS = "docs/datasets.md"
PROGRESS_FROM = 2000  # decode this many images or more: report progress


# --- options -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageOptions:
    """Options every RGB dataset has; each dataset's options extend these."""

    normalize: str = "none"  # none (the paper's code: /255 only) | imagenet (mean/std)

    def __post_init__(self) -> None:
        check(
            self.normalize in NORMALIZE,
            f"normalize must be one of {tuple(NORMALIZE)} (got {self.normalize!r})",
        )


@dataclass(frozen=True)
class ResizedOptions(ImageOptions):
    """Options of a dataset that is resized when decoded; each redeclares its defaults."""

    image_size: int = 84
    resample: str = "bilinear"

    def __post_init__(self) -> None:
        super().__post_init__()
        low, high = 8, 512
        check(
            low <= self.image_size <= high,
            f"image_size must be in [{low}, {high}] (got {self.image_size})",
        )
        check(
            self.resample in RESAMPLE,
            f"resample must be one of {RESAMPLE} (got {self.resample!r})",
        )


# --- decoding ------------------------------------------------------------------------------


def _filter(name: str) -> int:
    from PIL import Image

    return {
        "bilinear": Image.Resampling.BILINEAR,
        "bicubic": Image.Resampling.BICUBIC,
        "lanczos": Image.Resampling.LANCZOS,
    }[name]


@dataclass(frozen=True)
class Prep:
    """How a decoded image becomes a pool row: RGB, ``size``×``size``, uint8 ``[3, S, S]``.

    ``short=None``: resized to ``size``×``size`` (aspect not kept, as the 84 px miniImageNet
    files and BOIL's 32 px VGG Flower were made). ``short=n``: torchvision's
    ``Resize(n)`` then ``CenterCrop(size)`` (CUB in torchmeta and the CML code)."""

    size: int
    resample: str = "bilinear"
    short: int | None = None

    def apply(self, img: Any) -> np.ndarray:
        img = img.convert("RGB")
        resample = _filter(self.resample)
        if self.short is None:
            if img.size != (self.size, self.size):
                img = img.resize((self.size, self.size), resample)
        else:
            w, h = img.size
            if w <= h:
                new = (self.short, int(self.short * h / w))
            else:
                new = (int(self.short * w / h), self.short)
            if new != (w, h):
                img = img.resize(new, resample)
            top = int(round((new[1] - self.size) / 2.0))
            left = int(round((new[0] - self.size) / 2.0))
            img = img.crop((left, top, left + self.size, top + self.size))
        return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)

    def array(self, hwc: np.ndarray) -> np.ndarray:
        """An ``[H, W, 3]`` uint8 array as a pool row (resampled only if its size differs)."""
        if self.short is None and hwc.shape[:2] == (self.size, self.size):
            return hwc.transpose(2, 0, 1)
        from PIL import Image

        return self.apply(Image.fromarray(np.ascontiguousarray(hwc)))


def _pillow() -> Any:
    try:
        from PIL import Image
    except ImportError:
        raise CmlearnError("reading image datasets needs Pillow: pip install pillow") from None
    return Image


def decode(source: Path | bytes, prep: Prep, label: str | Path | None = None) -> np.ndarray:
    """One image file (or its bytes) as a pool row; an unreadable one is a one-line error
    naming the file (``label``, else the path)."""
    image = _pillow()
    name = label if label is not None else source if isinstance(source, Path) else "(bytes)"
    try:
        opened = image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
        with opened as img:
            return prep.apply(img)
    except FileNotFoundError:
        raise CmlearnError(f"image {name} not found") from None
    except (OSError, ValueError, SyntaxError, image.DecompressionBombError) as err:
        raise CmlearnError(f"image {name} is corrupt or unreadable ({one_line(err)})") from None


def decode_all(
    sources: Sequence[Path | bytes],
    prep: Prep,
    desc: str,
    out: np.ndarray | None = None,
    rows: np.ndarray | None = None,
    labels: Sequence[str] | None = None,
) -> np.ndarray:
    """Decode ``sources`` into ``out[rows]`` (default: a new ``[n, 3, S, S]`` array, in order)
    with a few threads (Pillow releases the GIL while decoding)."""
    n = len(sources)
    if out is None:
        out = np.empty((n, 3, prep.size, prep.size), dtype=np.uint8)
    where = np.arange(n) if rows is None else rows

    def work(i: int) -> None:
        label = labels[i] if labels is not None else None
        out[where[i]] = decode(sources[i], prep, label)

    bar = Progress(n, 0, desc, enabled=n >= PROGRESS_FROM)
    block = 1024
    try:
        with ThreadPoolExecutor(max(1, min(8, os.cpu_count() or 1))) as pool:
            for start in range(0, n, block):
                stop = min(n, start + block)
                list(pool.map(work, range(start, stop)))
                bar.update(stop - start)
    finally:
        bar.close()
    return out


def image_files(folder: Path) -> list[Path]:
    """The image files directly in ``folder``, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


# --- pools, splits, datasets ---------------------------------------------------------------


def pool_payload(images: np.ndarray, counts: Sequence[int], names: Sequence[str]) -> dict:
    """What a cache holds for a pool: the images (classes back to back), counts, names."""
    if len(counts) != len(names) or int(sum(counts)) != len(images):
        raise ValueError("pool counts disagree with the images")
    return {
        "images": torch.from_numpy(np.ascontiguousarray(images)),
        "counts": torch.tensor(list(counts), dtype=torch.long),
        "names": list(names),
    }


def make_pool(images: torch.Tensor, counts: torch.Tensor, names: Sequence[str]) -> ClassPool:
    counts = torch.as_tensor(counts, dtype=torch.long)
    offsets = torch.cumsum(counts, 0) - counts
    return ClassPool(images, offsets, counts, tuple(names))


def pool_from_payload(payload: dict) -> ClassPool:
    return make_pool(payload["images"], payload["counts"], payload["names"])


def files_key(paths: Sequence[Path], base: Path, *extra: object) -> str:
    """A cache key over the files' SHA-256, their names relative to ``base`` (a renamed
    class folder is another dataset) and the processing settings."""
    names = tuple(str(Path(p).relative_to(base)) for p in paths)
    try:
        return source_key(paths, *extra, names)
    except OSError as err:
        raise CmlearnError(f"cannot read {err.filename}: {err.strerror or err}") from None


def range_splits(class_counts: Sequence[int]) -> dict[str, ClassSplit]:
    """Splits that own consecutive pool classes: the first ``class_counts[0]`` are train, …"""
    out, start = {}, 0
    for split, n in zip(SPLITS, class_counts, strict=True):
        ids = torch.arange(start, start + n)
        out[split] = ClassSplit(ids, torch.zeros_like(ids))
        start += n
    return out


def named_splits(
    dataset: str, names: Sequence[str], wanted: dict[str, Sequence[str]], source: str
) -> dict[str, ClassSplit]:
    """Pool classes named by a split file; unknown names and a class in two splits are
    one-line errors naming ``source``."""
    index = {n: i for i, n in enumerate(names)}
    seen: dict[str, str] = {}
    out = {}
    for split in SPLITS:
        classes = list(wanted.get(split, ()))
        if not classes:
            raise CmlearnError(f"{dataset}: split file {source} has no {split!r} classes")
        missing = [c for c in classes if c not in index]
        if missing:
            raise CmlearnError(
                f"{dataset}: the {split} split ({source}) names {len(missing)} class(es) "
                f"missing from the data, e.g. {missing[0]!r}"
            )
        for c in classes:
            if c in seen:
                where = "twice" if seen[c] == split else f"in {seen[c]} and {split}"
                raise CmlearnError(f"{dataset}: split file {source} names {c!r} {where}")
            seen[c] = split
        ids = torch.tensor([index[c] for c in classes], dtype=torch.long)
        out[split] = ClassSplit(ids, torch.zeros_like(ids))
    return out


def packaged_split(name: str) -> tuple[dict, str]:
    """A split file shipped with cmlearn (``splits/NAME.json``) and its path, for messages."""
    path = PACKAGED_SPLITS / f"{name}.json"
    try:
        return json.loads(path.read_text()), str(path)
    except (OSError, ValueError) as err:
        raise CmlearnError(f"cannot read split file {path}: {one_line(err)}") from None


def image_dataset(
    name: str, pool: ClassPool, splits: dict[str, ClassSplit], normalize: str
) -> ClassDataset:
    stats = NORMALIZE[normalize]
    mean, std = stats if stats is not None else (None, None)
    return ClassDataset(name, pool, splits, "classes", mean, std)


# --- files, pickles, errors -----------------------------------------------------------------


def one_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def need(path: Path, what: str, hint: str) -> Path:
    """``path`` if it exists, else a one-line error saying what belongs there."""
    if not Path(path).exists():
        raise CmlearnError(f"{what} not found: expected {path} ({hint})")
    return Path(path)


def fetch_hint(name: str) -> str:
    return f"run 'cmlearn data fetch {name}', or see {DOCS}"


def manual_hint(name: str) -> str:
    return f"{name} has no public download; {DOCS} says how to get it and where it goes"


@contextmanager
def reading(path: Path) -> Iterator[None]:
    """Turn what a damaged file raises (many types) into one line naming the file."""
    try:
        yield
    except CmlearnError:
        raise
    except FileNotFoundError:
        raise CmlearnError(f"{path} not found") from None
    except MemoryError:
        raise CmlearnError(f"not enough memory to read {path}") from None
    except Exception as err:
        raise CmlearnError(f"{path} is corrupt or truncated ({one_line(err)})") from None


_np_core = getattr(np, "_core", None) or np.core
_SAFE = {  # every global the dataset pickles name (Python 2 and 3, NumPy 1 and 2)
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "_reconstruct"): _np_core.multiarray._reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _np_core.multiarray._reconstruct,
    ("numpy.core.multiarray", "scalar"): _np_core.multiarray.scalar,
    ("numpy._core.multiarray", "scalar"): _np_core.multiarray.scalar,
    ("numpy.core.numeric", "_frombuffer"): _np_core.numeric._frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _np_core.numeric._frombuffer,
    ("_codecs", "encode"): codecs.encode,
    ("collections", "OrderedDict"): OrderedDict,
    ("collections", "defaultdict"): defaultdict,
    **{
        (module, kind.__name__): kind
        for module in ("builtins", "__builtin__")
        for kind in (list, dict, set, tuple)
    },
}


class _SafeUnpickler(pickle.Unpickler):
    """Rebuilds arrays, lists, dicts and strings only: unpickling anything else could run
    arbitrary code."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _SAFE:
            raise pickle.UnpicklingError(f"holds a {module}.{name}, not dataset arrays")
        return _SAFE[(module, name)]


def unpickle(path: Path) -> Any:
    """A dataset pickle, Python 2 or 3, read with the restricted unpickler."""
    with reading(path), open(path, "rb") as f:
        return _SafeUnpickler(f, encoding="bytes").load()


def text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def str_keys(obj: Any, path: Path, keys: Sequence[str]) -> dict[str, Any]:
    """A pickled dict with ``bytes`` or ``str`` keys as a ``str``-keyed dict that has ``keys``."""
    if not isinstance(obj, dict):
        raise CmlearnError(f"{path} holds a {type(obj).__name__}, expected a dict")
    out = {text(k): v for k, v in obj.items()}
    missing = [k for k in keys if k not in out]
    if missing:
        raise CmlearnError(
            f"{path} has no {missing[0]!r} entry (found: {', '.join(sorted(out)) or 'none'})"
        )
    return out


def stat_key(paths: Sequence[Path], *extra: object) -> str:
    """A cache key from the files' names, sizes and modification times: for sources too big to
    checksum on every start (tieredImageNet: about 13–17 GB)."""
    digest = hashlib.sha256(repr(extra).encode())
    for p in paths:
        st = Path(p).stat()
        digest.update(f"{Path(p).name}:{st.st_size}:{st.st_mtime_ns};".encode())
    return digest.hexdigest()[:20]
