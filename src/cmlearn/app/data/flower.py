"""VGG Flower 102 (Nilsback & Zisserman, 2008): 8,189 images of 102 flower classes.

``<data root>/vgg_flower/jpg/image_00001.jpg`` … ``image_08189.jpg`` (``102flowers.tgz``
unpacked) and ``vgg_flower/imagelabels.mat`` (MATLAB, ``labels`` 1×8189, 1-based class ids),
both from ``https://www.robots.ox.ac.uk/~vgg/data/flowers/102/`` (``cmlearn data fetch
flower``). ``setid.mat`` (an image-level split) is not used for few-shot learning.

Split: 71 / 15 / 16 classes by class id, the Meta-Dataset split as BOIL and CML use it
(``splits/flower.json``; not 71 / 16 / 15). Classes hold 40–258 images.

Images are resized to 32×32 (aspect not kept) with Pillow's **bicubic** filter by default:
BOIL's ``vgg_flower.py`` builds its cache with ``img.resize((32, 32))``, whose filter is
Pillow's default, bicubic since Pillow 7 (``resample=bilinear`` for torchvision's). The pool
(8,189 × 3 KB = 25 MB at 32 px) is cached once, keyed by the files' SHA-256.
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
    decode_all,
    fetch_hint,
    files_key,
    image_dataset,
    named_splits,
    need,
    packaged_split,
    pool_from_payload,
    pool_payload,
    reading,
)
from cmlearn.core.errors import CmlearnError
from cmlearn.core.registry import DATASETS
from cmlearn.core.tasks.pool import ClassDataset

FOLDER = "vgg_flower"
LABELS = "imagelabels.mat"
CLASSES = 102


@dataclass(frozen=True)
class FlowerOptions(ResizedOptions):
    image_size: int = 32
    resample: str = "bicubic"  # bicubic (BOIL's script: Pillow's default) | bilinear | lanczos


def locate(root: Path) -> tuple[Path, Path]:
    """The labels file and the image folder (cheap: nothing is read)."""
    base = need(Path(root) / FOLDER, "VGG Flower folder", fetch_hint("flower"))
    return (
        need(base / LABELS, "VGG Flower labels", fetch_hint("flower")),
        need(base / "jpg", "VGG Flower images folder", fetch_hint("flower")),
    )


def read_labels(path: Path) -> np.ndarray:
    """The 1-based class id of each image, from ``imagelabels.mat``."""
    from scipy.io import loadmat

    with reading(path):
        mat = loadmat(path)
    if "labels" not in mat:
        raise CmlearnError(f"{path} has no 'labels' array")
    labels = np.asarray(mat["labels"]).ravel()
    if labels.size == 0 or labels.min() < 1 or labels.max() > CLASSES:
        raise CmlearnError(f"{path}: labels must be class ids 1..{CLASSES}")
    if not np.array_equal(labels, labels.astype(np.int64)):
        raise CmlearnError(f"{path}: labels must be whole numbers")
    return labels.astype(np.int64)


def class_name(class_id: int, names: dict[str, str]) -> str:
    return f"{class_id:03d}.{names.get(f'{class_id:03d}', 'class')}"


def read_pool(root: Path, cache_dir: Path, prep: Prep, names: dict[str, str]) -> dict:
    """Every class present, by id; images in file order within a class."""
    labels_path, folder = locate(root)
    labels = read_labels(labels_path)
    files = [folder / f"image_{i:05d}.jpg" for i in range(1, len(labels) + 1)]
    key = files_key([labels_path, *files], Path(root) / FOLDER, prep, sorted(names.items()))

    def build() -> dict:
        order = np.argsort(labels, kind="stable")
        images = decode_all([files[i] for i in order], prep, "decoding VGG Flower")
        ids, counts = np.unique(labels, return_counts=True)
        return pool_payload(images, counts.tolist(), [class_name(int(c), names) for c in ids])

    return cached(cache_dir, f"flower{prep.size}", key, build)


# --- registration -----------------------------------------------------------------------------

URL = "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/"
ABOUT = Entry(
    "flower",
    "VGG Flower 102 (Nilsback & Zisserman 2008), Meta-Dataset split",
    "vgg_flower",
    locate,
    (71, 15, 16),
    total=8_189,
    files=(KnownFile("vgg_flower/imagelabels.mat", "e0620be6f572b9609742df49c70aed4d"),),
    downloads=(
        Download(
            "102flowers.tgz",
            URL + "102flowers.tgz",
            "52808999861908f626f3c1f4e79d11fa",
            "vgg_flower",
            "vgg_flower/jpg",
            unpack=True,
        ),
        Download(
            "imagelabels.mat",
            URL + "imagelabels.mat",
            "e0620be6f572b9609742df49c70aed4d",
            "vgg_flower",
            "vgg_flower/imagelabels.mat",
        ),
    ),
    cache="flower",
)


@DATASETS.register(
    "flower",
    FlowerOptions,
    "VGG Flower 102, 71/15/16 classes (Meta-Dataset split), 32 px",
    catalog=ABOUT,
)
def flower(options: FlowerOptions, root: Path, cache_dir: Path) -> ClassDataset:
    spec, source = packaged_split("flower")
    names = spec.get("names", {})
    payload = read_pool(root, cache_dir, Prep(options.image_size, options.resample), names)
    pool = pool_from_payload(payload)
    wanted = {split: [class_name(int(c), names) for c in spec.get(split, ())] for split in SPLITS}
    splits = named_splits("flower", pool.names, wanted, source)
    return image_dataset("flower", pool, splits, options.normalize)
