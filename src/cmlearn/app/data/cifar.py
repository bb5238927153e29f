"""CIFAR-FS (Bertinetto et al., ICLR 2019) and FC100 (Oreshkin et al., NeurIPS 2018), both
cut from CIFAR-100's python pickles.

``<data root>/cifar-100-python/{train,test,meta}`` is the official archive
(``https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz``, ``cmlearn data fetch cifarfs``)
unpacked. ``train`` and ``test`` are Python 2 pickles (``bytes`` keys) of ``data`` uint8
``[N, 3072]`` (R, G and B planes of a 32×32 image, each row-major), ``fine_labels`` and
``coarse_labels``; ``meta`` holds ``fine_label_names`` and ``coarse_label_names``. Train and
test are merged per fine class: 100 classes × 600 images (500 train then 100 test rows).

- ``cifarfs``: 64 / 16 / 20 fine classes, the split of ``splits/cifarfs.json`` (torchmeta's,
  which BOIL and CML use; its source is named in the file).
- ``fc100``: by superclass, 12 / 4 / 4 superclasses = 60 / 20 / 20 fine classes
  (``splits/fc100.json``): the fine classes whose images carry those coarse labels.

32×32 as stored, no resize (``image_size`` resizes, bilinear by default); pixels / 255 and no
normalisation unless ``normalize=imagenet``. The pool (60,000 × 3 KB = 184 MB) is cached once,
keyed by the pickles' SHA-256, and shared by both datasets.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cmlearn.app.data.about import Download, Entry, KnownFile
from cmlearn.app.data.cache import cached
from cmlearn.app.data.images import (
    SPLITS,
    Prep,
    ResizedOptions,
    fetch_hint,
    files_key,
    image_dataset,
    named_splits,
    need,
    packaged_split,
    pool_from_payload,
    pool_payload,
    str_keys,
    text,
    unpickle,
)
from cmlearn.core.errors import CmlearnError
from cmlearn.core.registry import DATASETS
from cmlearn.core.tasks.pool import ClassDataset

FOLDER = "cifar-100-python"
PARTS = ("train", "test", "meta")
SIZE = 32


@dataclass(frozen=True)
class CifarOptions(ResizedOptions):
    image_size: int = SIZE
    resample: str = "bilinear"  # only used when image_size is not 32


def locate(root: Path, name: str = "cifarfs") -> list[Path]:
    """The three pickles (cheap: nothing is read)."""
    base = need(Path(root) / FOLDER, "CIFAR-100 (python version)", fetch_hint(name))
    return [need(base / part, f"CIFAR-100 {part!r} pickle", fetch_hint(name)) for part in PARTS]


def read_pool(root: Path, cache_dir: Path, prep: Prep, name: str = "cifarfs") -> dict:
    """All 100 fine classes (in label order) and each one's superclass, cached."""
    paths = locate(root, name)
    key = files_key(paths, Path(root), prep)
    return cached(cache_dir, f"cifar100-{prep.size}", key, lambda: _decode(paths, prep))


def _decode(paths: list[Path], prep: Prep) -> dict:
    train, test, meta_path = paths
    meta = str_keys(unpickle(meta_path), meta_path, ("fine_label_names", "coarse_label_names"))
    fine_names = [text(n) for n in meta["fine_label_names"]]
    coarse_names = [text(n) for n in meta["coarse_label_names"]]
    parts = [_part(p, len(fine_names), len(coarse_names)) for p in (train, test)]
    data = np.concatenate([d for d, _, _ in parts])
    fine = np.concatenate([f for _, f, _ in parts])
    coarse = np.concatenate([c for _, _, c in parts])
    order = np.argsort(fine, kind="stable")  # per class: train rows, then test rows
    counts = np.bincount(fine, minlength=len(fine_names))
    superclass = []
    for c in range(len(fine_names)):
        found = np.unique(coarse[fine == c])
        if len(found) > 1:
            raise CmlearnError(
                f"{train.parent}: fine class {fine_names[c]!r} has several coarse labels"
            )
        superclass.append(coarse_names[found[0]] if len(found) else "")
    images = data[order].reshape(-1, 3, SIZE, SIZE)
    if prep.size != SIZE:
        images = np.stack([prep.array(img.transpose(1, 2, 0)) for img in images])
    payload = pool_payload(images, counts.tolist(), fine_names)
    payload["coarse"] = superclass
    return payload


def _part(path: Path, n_fine: int, n_coarse: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    part = str_keys(unpickle(path), path, ("data", "fine_labels", "coarse_labels"))
    data = part["data"]
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2):
        shape = getattr(data, "shape", type(data).__name__)
        raise CmlearnError(f"{path}: data is {shape}, expected uint8 [N, 3072]")
    if data.shape[1] != 3 * SIZE * SIZE:
        raise CmlearnError(f"{path}: data has {data.shape[1]} columns, expected 3072 (32×32×3)")
    fine = np.asarray(part["fine_labels"], dtype=np.int64)
    coarse = np.asarray(part["coarse_labels"], dtype=np.int64)
    if fine.shape != (len(data),) or coarse.shape != (len(data),):
        raise CmlearnError(f"{path}: {len(data)} images but labels of shape {fine.shape}")
    if len(data) and not (0 <= fine.min() and fine.max() < n_fine):
        raise CmlearnError(f"{path}: fine_labels outside the {n_fine} names in meta")
    if len(data) and not (0 <= coarse.min() and coarse.max() < n_coarse):
        raise CmlearnError(f"{path}: coarse_labels outside the {n_coarse} names in meta")
    return data, fine, coarse


def _dataset(name: str, options: CifarOptions, root: Path, cache_dir: Path) -> ClassDataset:
    payload = read_pool(root, cache_dir, Prep(options.image_size, options.resample), name)
    pool = pool_from_payload(payload)
    spec, source = packaged_split(name)
    if name == "fc100":
        wanted = {}
        for split in SPLITS:
            supers = set(spec.get(split, ()))
            unknown = supers - set(payload["coarse"])
            if unknown:
                raise CmlearnError(
                    f"fc100: the {split} split ({source}) names superclass "
                    f"{sorted(unknown)[0]!r}, which no image carries"
                )
            wanted[split] = [
                n for n, c in zip(pool.names, payload["coarse"], strict=True) if c in supers
            ]
    else:
        wanted = {split: spec.get(split, ()) for split in SPLITS}
    return image_dataset(
        name, pool, named_splits(name, pool.names, wanted, source), options.normalize
    )


# --- registration -----------------------------------------------------------------------------

DOWNLOAD = Download(
    "cifar-100-python.tar.gz",
    "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
    "eb9058c3a382ffc7106e4002c42a8d85",
    ".",
    "cifar-100-python",
    unpack=True,
)
FILES = (
    KnownFile("cifar-100-python/train", "16019d7e3df5f24257cddd939b257f8d"),
    KnownFile("cifar-100-python/test", "f0ef6b0ae62326f3e7ffdfab6717acfc"),
    KnownFile("cifar-100-python/meta", "7973b15100ade9c7d40fb424638fde48"),
)
CIFARFS = Entry(
    "cifarfs",
    "CIFAR-FS (Bertinetto et al. 2019) from CIFAR-100",
    "cifar-100-python",
    lambda root: locate(root, "cifarfs"),
    (64, 16, 20),
    (38_400, 9_600, 12_000),
    files=FILES,
    downloads=(DOWNLOAD,),
    cache="cifar100",
)
FC100 = Entry(
    "fc100",
    "FC100 (Oreshkin et al. 2018) from CIFAR-100",
    "cifar-100-python",
    lambda root: locate(root, "fc100"),
    (60, 20, 20),
    (36_000, 12_000, 12_000),
    files=FILES,
    downloads=(DOWNLOAD,),
    cache="cifar100",
)


@DATASETS.register(
    "cifarfs",
    CifarOptions,
    "CIFAR-FS: CIFAR-100, 64/16/20 fine classes of 600 (Bertinetto)",
    catalog=CIFARFS,
)
def cifarfs(options: CifarOptions, root: Path, cache_dir: Path) -> ClassDataset:
    return _dataset("cifarfs", options, root, cache_dir)


@DATASETS.register(
    "fc100",
    CifarOptions,
    "FC100: CIFAR-100 by superclass, 60/20/20 fine classes (Oreshkin)",
    catalog=FC100,
)
def fc100(options: CifarOptions, root: Path, cache_dir: Path) -> ClassDataset:
    return _dataset("fc100", options, root, cache_dir)
