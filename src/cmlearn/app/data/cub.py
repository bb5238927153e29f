"""CUB-200-2011 (Wah et al., 2011): 11,788 photographs of 200 bird species.

``<data root>/cub/CUB_200_2011/images/<class folder>/*.jpg`` (``CUB_200_2011.tgz`` unpacked
into ``cub/``; ``cmlearn data fetch cub``); class folders are named like
``001.Black_footed_Albatross``. ``classes.txt`` and the other annotation files are not needed.

Split: 100 / 50 / 50 class folders of Chen et al. (ICLR 2019), as torchmeta ships them and
the BOIL / CML code (which vendors torchmeta) reads them (``splits/cub.json``).

Preprocessing (``crop``): ``center`` (default) is the CML code's torchmeta transform,
``Resize(126)`` (shorter side to 126 = 1.5 × 84, bilinear) then ``CenterCrop(84)``;
``resize`` squashes the whole photograph to 84×84. Greyscale photographs become RGB. The pool
(11,788 × 21 KB = 250 MB at 84 px) is cached once, keyed by the files' SHA-256.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cmlearn.app.data.about import Download, Entry
from cmlearn.app.data.cache import cached
from cmlearn.app.data.images import (
    SPLITS,
    Prep,
    ResizedOptions,
    decode_all,
    fetch_hint,
    files_key,
    image_dataset,
    image_files,
    named_splits,
    need,
    packaged_split,
    pool_from_payload,
    pool_payload,
)
from cmlearn.core.errors import CmlearnError
from cmlearn.core.registry import DATASETS, check
from cmlearn.core.tasks.pool import ClassDataset

FOLDER = "cub"
IMAGES = Path("CUB_200_2011") / "images"
CROPS = ("center", "resize")


@dataclass(frozen=True)
class CubOptions(ResizedOptions):
    crop: str = "center"  # center: Resize(1.5 × size) → CenterCrop(size) | resize: squash
    image_size: int = 84
    resample: str = "bilinear"

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.crop in CROPS, f"cub crop must be one of {CROPS} (got {self.crop!r})")

    def prep(self) -> Prep:
        short = int(self.image_size * 1.5) if self.crop == "center" else None
        return Prep(self.image_size, self.resample, short)


def locate(root: Path) -> Path:
    """The images folder (cheap: nothing is read)."""
    need(Path(root) / FOLDER, "CUB folder", fetch_hint("cub"))
    return need(Path(root) / FOLDER / IMAGES, "CUB-200-2011 images folder", fetch_hint("cub"))


def read_pool(root: Path, cache_dir: Path, prep: Prep, classes: list[str]) -> dict:
    """The split files' classes, in folder-name order; images by file name within a class."""
    folder = locate(root)
    files = {}
    for name in sorted(classes):
        path = folder / name
        if not path.is_dir():
            raise CmlearnError(f"CUB class folder {path} not found (named by the packaged split)")
        files[name] = image_files(path)
        if not files[name]:
            raise CmlearnError(f"CUB class folder {path} holds no images")
    flat = [f for name in files for f in files[name]]
    key = files_key(flat, folder, prep)

    def build() -> dict:
        images = decode_all(flat, prep, "decoding CUB")
        return pool_payload(images, [len(v) for v in files.values()], list(files))

    return cached(cache_dir, f"cub{prep.size}", key, build)


# --- registration -----------------------------------------------------------------------------

ABOUT = Entry(
    "cub",
    "CUB-200-2011 (Wah et al. 2011), Chen et al. split",
    "cub",
    locate,
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
)


@DATASETS.register(
    "cub",
    CubOptions,
    "CUB-200-2011 birds, 100/50/50 classes (Chen et al.), 84 px centre crop",
    catalog=ABOUT,
)
def cub(options: CubOptions, root: Path, cache_dir: Path) -> ClassDataset:
    spec, source = packaged_split("cub")
    wanted = {split: list(spec.get(split, ())) for split in SPLITS}
    classes = [c for split in SPLITS for c in wanted[split]]
    payload = read_pool(root, cache_dir, options.prep(), classes)
    pool = pool_from_payload(payload)
    splits = named_splits("cub", pool.names, wanted, source)
    return image_dataset("cub", pool, splits, options.normalize)
