"""miniImageNet (Vinyals et al. 2016; split of Ravi & Larochelle 2017): 100 ImageNet classes ×
600 images, 64 / 16 / 20 classes, 84×84 RGB.

There is no official public download (the ImageNet licence applies). Three layouts are read
from ``<data root>/miniimagenet/``, found automatically (``layout=auto``, in this order) or
named (``layout=pickle|csv|folders``):

- ``pickle``: ``mini-imagenet-cache-{train,val,test}.pkl`` (``renmengye/few-shot-ssl-public``,
  torchmeta's tar, learn2learn, which names the validation file ``…-validation.pkl``): a dict
  with ``image_data`` uint8 ``[N, 84, 84, 3]`` and ``class_dict`` wnid → row indices.
- ``csv``: Ravi & Larochelle's ``images/*.jpg`` with ``train.csv``, ``val.csv``, ``test.csv``
  (header ``filename,label``, one row per image).
- ``folders``: ``{train,val,test}/<wnid>/*.jpg`` as Finn's ``proc_images.py`` writes them,
  also under ``mini_imagenet_full_size/`` (the MAML++ layout).

Within a split, classes are sorted by wnid and images keep their order (file name for the
two image layouts, the ``class_dict`` order for pickles), so the three layouts of the same
images give the same pool. Images not already ``image_size`` square are resized (bilinear by
default, ``images.Prep``); the pool (84 px: 60,000 × 21 KB = 1.27 GB in memory) is cached once,
keyed by the files' SHA-256. The split is whatever the files say; ``cmlearn data check
miniimagenet`` compares it with the standard 64 / 16 / 20.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cmlearn.app.data.about import Entry
from cmlearn.app.data.cache import cached
from cmlearn.app.data.images import (
    SPLITS,
    Prep,
    ResizedOptions,
    decode_all,
    files_key,
    image_dataset,
    image_files,
    manual_hint,
    need,
    pool_from_payload,
    pool_payload,
    range_splits,
    reading,
    str_keys,
    unpickle,
)
from cmlearn.core.errors import CmlearnError
from cmlearn.core.registry import DATASETS, check
from cmlearn.core.tasks.pool import ClassDataset

FOLDER = "miniimagenet"
LAYOUTS = ("auto", "pickle", "csv", "folders")
PICKLE = "mini-imagenet-cache-{}.pkl"
PICKLE_NAMES = {"train": ("train",), "val": ("val", "validation"), "test": ("test",)}
FULL_SIZE = "mini_imagenet_full_size"
EXPECTED = (
    "mini-imagenet-cache-{train,val,test}.pkl, or images/ with {train,val,test}.csv, or "
    "{train,val,test}/<wnid>/*.jpg (also under mini_imagenet_full_size/)"
)


@dataclass(frozen=True)
class MiniImageNetOptions(ResizedOptions):
    layout: str = "auto"  # auto | pickle | csv | folders
    image_size: int = 84
    resample: str = "bilinear"  # bilinear (torchvision Resize) | bicubic | lanczos (Finn)

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.layout in LAYOUTS, f"miniimagenet layout must be one of {LAYOUTS}")


@dataclass(frozen=True)
class Layout:
    """A found layout: its name, its folder, and the file(s) of each split."""

    name: str
    base: Path
    files: dict[str, Path]  # split -> pickle, csv or class-folder parent


def locate(root: Path, layout: str = "auto") -> Layout:
    """The layout under ``<root>/miniimagenet`` (cheap: names only, nothing is read)."""
    base = need(Path(root) / FOLDER, "miniImageNet folder", manual_hint("miniImageNet"))
    finders = {"pickle": _pickles, "csv": _csvs, "folders": _folders}
    if layout != "auto":
        found, missing = finders[layout](base)
        if missing:
            raise CmlearnError(f"miniImageNet ({layout} layout): missing {missing}")
        return Layout(layout, base, found)
    partial = None
    for name, finder in finders.items():
        found, missing = finder(base)
        if not missing:
            return Layout(name, base, found)
        if partial is None and (found or (name == "csv" and (base / "images").is_dir())):
            partial = f"miniImageNet ({name} layout) in {base}: missing {missing}"
    if partial is not None:  # one layout begun: name what it lacks
        raise CmlearnError(partial)
    raise CmlearnError(f"no miniImageNet layout found in {base}: expected {EXPECTED}")


def _pickles(base: Path) -> tuple[dict[str, Path], str | None]:
    found = {}
    for split in SPLITS:
        paths = [base / PICKLE.format(n) for n in PICKLE_NAMES[split]]
        hit = next((p for p in paths if p.is_file()), None)
        if hit is None:
            return found, str(paths[0])
        found[split] = hit
    return found, None


def _csvs(base: Path) -> tuple[dict[str, Path], str | None]:
    if not (base / "images").is_dir():
        return {}, str(base / "images")
    found = {}
    for split in SPLITS:
        path = base / f"{split}.csv"
        if not path.is_file():
            return found, str(path)
        found[split] = path
    return found, None


def _folders(base: Path) -> tuple[dict[str, Path], str | None]:
    for top in (base, base / FULL_SIZE):
        if all((top / split).is_dir() for split in SPLITS):
            return {split: top / split for split in SPLITS}, None
    return {}, str(base / "train")


def _csv_classes(path: Path, images: Path) -> dict[str, list[Path]]:
    with reading(path), open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows or [c.strip() for c in rows[0]] != ["filename", "label"]:
        raise CmlearnError(f"{path}: expected the header 'filename,label'")
    classes: dict[str, list[Path]] = {}
    for number, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        if len(row) != 2:
            raise CmlearnError(f"{path}:{number}: expected 'filename,label'")
        classes.setdefault(row[1].strip(), []).append(images / row[0].strip())
    return {c: sorted(files) for c, files in classes.items()}


def _folder_classes(split_dir: Path) -> dict[str, list[Path]]:
    return {d.name: image_files(d) for d in sorted(split_dir.iterdir()) if d.is_dir()}


def _pickle_classes(path: Path) -> tuple[np.ndarray, dict[str, list[int]]]:
    data = str_keys(unpickle(path), path, ("image_data", "class_dict"))
    images, classes = data["image_data"], data["class_dict"]
    if not (
        isinstance(images, np.ndarray)
        and images.dtype == np.uint8
        and images.ndim == 4
        and images.shape[-1] == 3
    ):
        shape = getattr(images, "shape", type(images).__name__)
        raise CmlearnError(f"{path}: image_data is {shape}, expected uint8 [N, H, W, 3]")
    if not isinstance(classes, dict):
        raise CmlearnError(f"{path}: class_dict is not a dict of row lists")
    out = {}
    for name, rows in classes.items():
        try:
            index = [int(r) for r in rows]
        except (TypeError, ValueError):
            raise CmlearnError(f"{path}: class_dict[{name!r}] is not a list of rows") from None
        if any(not 0 <= r < len(images) for r in index):
            raise CmlearnError(f"{path}: class_dict[{name!r}] names rows outside image_data")
        out[name.decode() if isinstance(name, bytes) else str(name)] = index
    return images, out


def read_pool(layout: Layout, cache_dir: Path, prep: Prep) -> dict:
    """The pool payload (classes: train, then val, then test, each sorted by name)."""
    name = f"miniimagenet{prep.size}"
    if layout.name == "pickle":
        paths = [layout.files[s] for s in SPLITS]
        key = files_key(paths, layout.base, layout.name, prep)
        return cached(cache_dir, name, key, lambda: _from_pickles(layout, prep))
    per_split = {s: _image_classes(layout, s) for s in SPLITS}
    paths = [layout.files[s] for s in SPLITS] if layout.name == "csv" else []
    paths += [f for s in SPLITS for c in sorted(per_split[s]) for f in per_split[s][c]]
    key = files_key(paths, layout.base, layout.name, prep)
    return cached(cache_dir, name, key, lambda: _from_images(per_split, prep))


def _image_classes(layout: Layout, split: str) -> dict[str, list[Path]]:
    if layout.name == "csv":
        classes = _csv_classes(layout.files[split], layout.base / "images")
    else:
        classes = _folder_classes(layout.files[split])
    if not classes:
        raise CmlearnError(f"miniImageNet: {layout.files[split]} lists no classes")
    empty = [c for c, files in classes.items() if not files]
    if empty:
        raise CmlearnError(f"miniImageNet: class {empty[0]} of {split} has no images")
    return classes


def _from_images(per_split: dict[str, dict[str, list[Path]]], prep: Prep) -> dict:
    names, counts, files = _order(per_split)
    images = decode_all(files, prep, "decoding miniImageNet")
    payload = pool_payload(images, counts, names)
    payload["splits"] = [len(per_split[s]) for s in SPLITS]
    return payload


def _order(per_split: dict[str, dict]) -> tuple[list[str], list[int], list]:
    names, counts, items = [], [], []
    seen: dict[str, str] = {}
    for split in SPLITS:
        for name in sorted(per_split[split]):
            if name in seen:
                raise CmlearnError(f"miniImageNet: class {name} is in {seen[name]} and {split}")
            seen[name] = split
            members = per_split[split][name]
            names.append(name)
            counts.append(len(members))
            items.extend(members)
    return names, counts, items


def _from_pickles(layout: Layout, prep: Prep) -> dict:
    per_split, arrays = {}, {}
    for split in SPLITS:
        arrays[split], per_split[split] = _pickle_classes(layout.files[split])
    names, counts, _ = _order(per_split)
    out = np.empty((sum(counts), 3, prep.size, prep.size), dtype=np.uint8)
    row = 0
    for split in SPLITS:
        images = arrays.pop(split)
        for name in sorted(per_split[split]):
            for r in per_split[split][name]:
                out[row] = prep.array(images[r])
                row += 1
        del images
    payload = pool_payload(out, counts, names)
    payload["splits"] = [len(per_split[s]) for s in SPLITS]
    return payload


# --- registration -----------------------------------------------------------------------------

MANUAL = (
    "no licence-clean public download (ImageNet terms). Put one layout in "
    "<data root>/miniimagenet/: the pickles mini-imagenet-cache-{train,val,test}.pkl "
    "(renmengye/few-shot-ssl-public; learn2learn fetches them from "
    "https://zenodo.org/record/7978538), or Ravi & Larochelle's images/ with "
    "{train,val,test}.csv, or {train,val,test}/<wnid>/*.jpg"
)
ABOUT = Entry(
    "miniimagenet",
    "miniImageNet (Vinyals et al. 2016, Ravi & Larochelle split)",
    "miniimagenet",
    locate,
    (64, 16, 20),
    (38_400, 9_600, 12_000),
    manual=MANUAL,
    cache="miniimagenet",
)


@DATASETS.register(
    "miniimagenet",
    MiniImageNetOptions,
    "miniImageNet, 64/16/20 classes of 600 (pickle, csv or folder layout; no public download)",
    catalog=ABOUT,
)
def miniimagenet(options: MiniImageNetOptions, root: Path, cache_dir: Path) -> ClassDataset:
    layout = locate(root, options.layout)
    payload = read_pool(layout, cache_dir, Prep(options.image_size, options.resample))
    pool = pool_from_payload(payload)
    return image_dataset("miniimagenet", pool, range_splits(payload["splits"]), options.normalize)
