"""Omniglot (Lake et al., Science 2015) read straight from the official zips.

``<data root>/omniglot/images_background.zip`` (964 characters) and
``images_evaluation.zip`` (659), 20 drawings each, 105×105 1-bit PNGs. Each drawing is
converted to greyscale *before* the Lanczos resize (resizing a 1-bit image gives a binary
mess) and inverted so strokes are bright (Finn et al. take ``1 - x/255``). The result is a
uint8 pool ``[1623, 20, 1, S, S]`` cached once, keyed by the zips' SHA-256.

Splits (class counts before rotation):

- ``vinyals`` (default): 1028 / 172 / 423 characters from the standard JSON files (in the
  data root's ``omniglot/splits/vinyals``, else the copy shipped with cmlearn), each
  character ×4 rotations as new classes: 4112 / 688 / 1692.
- ``lake``: background set = meta-train, evaluation set = meta-test; validation is carved out
  of the background set as the 5 alphabets of Vinyals' validation split. No rotation.
- ``finn``: the 1,623 characters shuffled with seed 1 (our NumPy shuffle; Finn's own order
  depended on his file listing), cut 1100 / 100 / 423 (in the same proportions, each split at
  least one character, for a pool of another size), with a random multiple of 90° drawn per
  class per task, on every split as in Finn's code.
"""

from __future__ import annotations

import io
import json
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cmlearn.app.data.about import Download, Entry, KnownFile
from cmlearn.app.data.cache import cached, source_key
from cmlearn.app.data.images import need
from cmlearn.core.errors import CmlearnError
from cmlearn.core.registry import DATASETS, check
from cmlearn.core.tasks.pool import ClassDataset, ClassPool, ClassSplit

SETS = ("background", "evaluation")
DRAWINGS = 20
URL = "https://github.com/brendenlake/omniglot/raw/master/python/images_{}.zip"
SPLITS = ("vinyals", "lake", "finn")
ROTATIONS = ("default", "classes", "task", "none")
DEFAULT_ROTATION = {"vinyals": "classes", "lake": "none", "finn": "task"}
PACKAGED_SPLITS = Path(__file__).parent / "splits" / "omniglot_vinyals"


@dataclass(frozen=True)
class OmniglotOptions:
    split: str = "vinyals"  # vinyals | lake | finn
    rotation: str = "default"  # default (the split's protocol) | classes | task | none
    rotate_test: bool = True  # False: test classes unrotated (torchmeta pipelines' behaviour)
    image_size: int = 28

    def __post_init__(self) -> None:
        check(self.split in SPLITS, f"omniglot split must be one of {SPLITS} (got {self.split!r})")
        check(self.rotation in ROTATIONS, f"omniglot rotation must be one of {ROTATIONS}")
        check(8 <= self.image_size <= 105, "omniglot image_size must be in [8, 105]")


def zip_paths(root: Path) -> list[Path]:
    return [Path(root) / "omniglot" / f"images_{s}.zip" for s in SETS]


def read_pool(root: Path, cache_dir: Path, size: int = 28) -> ClassPool:
    """All 1,623 characters as a uint8 pool, from the cache or decoded once from the zips."""
    paths = zip_paths(root)
    for path, name in zip(paths, SETS, strict=True):
        if not path.is_file():
            raise CmlearnError(
                f"Omniglot not found: expected {path} (download {URL.format(name)} into "
                f"{path.parent}, or point --data-root / CMLEARN_DATA at the folder holding "
                "omniglot/)"
            )
    try:
        key = source_key(paths, "omniglot", size)
    except OSError as err:
        raise CmlearnError(f"cannot read Omniglot zips: {err}") from None
    payload = cached(cache_dir, f"omniglot{size}", key, lambda: _decode(paths, size))
    images, names = payload["images"], tuple(payload["names"])
    return ClassPool.equal(images, names)


def _decode(paths: list[Path], size: int) -> dict:
    try:
        from PIL import Image
    except ImportError:
        raise CmlearnError("reading Omniglot needs Pillow: pip install pillow") from None

    images, names = [], []
    for path in paths:
        try:
            with zipfile.ZipFile(path) as archive:
                chars: dict[str, list[str]] = {}
                for member in archive.namelist():
                    if member.endswith(".png"):
                        chars.setdefault(member.rsplit("/", 1)[0], []).append(member)
                if not chars:
                    raise CmlearnError(f"{path} holds no Omniglot PNGs")
                for char in sorted(chars):
                    files = sorted(chars[char])
                    if len(files) != DRAWINGS:
                        raise CmlearnError(
                            f"{path}: {char} has {len(files)} drawings, expected {DRAWINGS}"
                        )
                    drawn = []
                    for name in files:
                        img = Image.open(io.BytesIO(archive.read(name))).convert("L")
                        img = img.resize((size, size), Image.Resampling.LANCZOS)
                        drawn.append(255 - np.asarray(img, dtype=np.uint8))
                    images.append(np.stack(drawn))
                    names.append(char)
        except (
            zipfile.BadZipFile,
            zipfile.LargeZipFile,
            zlib.error,
            EOFError,
            OSError,
            ValueError,
        ) as err:
            raise CmlearnError(f"{path} is corrupt or truncated ({_one_line(err)})") from None
    pool = torch.from_numpy(np.stack(images)).unsqueeze(2)  # [1623, 20, 1, S, S]
    return {"images": pool, "names": names}


def _one_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def vinyals_characters(root: Path, names: tuple[str, ...]) -> dict[str, list[int]]:
    """Pool indices of the Vinyals train/val/test characters."""
    folder = Path(root) / "omniglot" / "splits" / "vinyals"
    folder = folder if (folder / "train.json").is_file() else PACKAGED_SPLITS
    index = {name: i for i, name in enumerate(names)}
    out: dict[str, list[int]] = {}
    seen: dict[str, str] = {}  # character -> the split that named it first
    for split in ("train", "val", "test"):
        path = folder / f"{split}.json"
        try:
            spec = json.loads(path.read_text())
            chars = [
                f"images_{s}/{alphabet}/{char}"
                for s, alphabets in spec.items()
                for alphabet, characters in alphabets.items()
                for char in characters
            ]
        except (OSError, ValueError, AttributeError, TypeError) as err:
            raise CmlearnError(f"cannot read split file {path}: {_one_line(err)}") from None
        unknown = [c for c in chars if c not in index]
        if unknown:
            raise CmlearnError(
                f"split file {path} names {len(unknown)} unknown character(s), e.g. {unknown[0]}"
            )
        for char in chars:
            if char in seen:
                where = "twice" if seen[char] == split else f"in {seen[char]} and {split}"
                raise CmlearnError(f"split files in {folder} name {char} {where}")
            seen[char] = split
        out[split] = [index[c] for c in chars]
    return out


def character_splits(split: str, root: Path, names: tuple[str, ...]) -> dict[str, list[int]]:
    if split == "vinyals":
        return vinyals_characters(root, names)
    if split == "lake":
        background = [i for i, n in enumerate(names) if n.startswith("images_background/")]
        val = set(vinyals_characters(root, names)["val"]) & set(background)
        return {
            "train": [i for i in background if i not in val],
            "val": sorted(val),
            "test": [i for i, n in enumerate(names) if n.startswith("images_evaluation/")],
        }
    n = len(names)
    train, val = finn_sizes(n)
    order = np.random.default_rng(1).permutation(n).tolist()
    return {"train": order[:train], "val": order[train : train + val], "test": order[train + val :]}


def finn_sizes(n: int) -> tuple[int, int]:
    """Train and validation sizes of Finn's cut: 1100 and 100 of 1,623 characters (the rest
    is test), in proportion for ``n`` characters with at least one in each split."""
    val = max(1, round(n * 100 / 1623))
    train = min(max(1, round(n * 1100 / 1623)), n - val - 1)
    return train, val


def make_split(chars: list[int], rotation: str) -> ClassSplit:
    ids = torch.tensor(chars, dtype=torch.long)
    if rotation == "classes":  # every character ×4 quarter turns, each a class of its own
        return ClassSplit(ids.repeat_interleave(4), torch.arange(4).repeat(len(ids)))
    fill = -1 if rotation == "task" else 0
    return ClassSplit(ids, torch.full_like(ids, fill))


# --- registration -----------------------------------------------------------------------------

MD5 = {  # of the official zips (the checksums torchvision and torchmeta use)
    "background": "68d2efa1b9178cc56df9314c21c6e718",
    "evaluation": "6b91aef0f799c5bb55b94e3f2daec811",
}


def locate(root: Path) -> list[Path]:
    """The two zips (cheap: nothing is read)."""
    hint = "run 'cmlearn data fetch omniglot'"
    return [need(p, "Omniglot zip", hint) for p in zip_paths(root)]


ABOUT = Entry(
    "omniglot",
    "Omniglot (Lake et al. 2015), Vinyals split ×4 rotations",
    "omniglot",
    locate,
    (4112, 688, 1692),
    (4112 * 20, 688 * 20, 1692 * 20),
    files=tuple(KnownFile(f"omniglot/images_{s}.zip", md5) for s, md5 in MD5.items()),
    downloads=tuple(
        Download(f"images_{s}.zip", URL.format(s), md5, "omniglot", f"omniglot/images_{s}.zip")
        for s, md5 in MD5.items()
    ),
    cache="omniglot",
)


@DATASETS.register(
    "omniglot",
    OmniglotOptions,
    "Omniglot from the official zips (1,623 characters)",
    catalog=ABOUT,
)
def omniglot(options: OmniglotOptions, root: Path, cache_dir: Path) -> ClassDataset:
    pool = read_pool(root, cache_dir, options.image_size)
    rotation = (
        DEFAULT_ROTATION[options.split] if options.rotation == "default" else options.rotation
    )
    chars = character_splits(options.split, root, pool.names)
    splits = {}
    for split, ids in chars.items():
        mode = rotation if split != "test" or options.rotate_test else "none"
        splits[split] = make_split(ids, mode)
    return ClassDataset("omniglot", pool, splits)
