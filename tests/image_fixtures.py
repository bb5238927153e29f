"""Tiny copies of the few-shot image datasets, written in each one's real on-disk format.

``write_fixture(name, root, …)`` writes dataset ``name`` under the data root ``root`` as its
distribution lays it out (CIFAR-100's Python-2-style pickles with ``bytes`` keys, VGG
Flower's jpgs and ``imagelabels.mat``, CUB's class folders, miniImageNet's three layouts,
tieredImageNet's npz / PNG pickles), with few, small images per class so that loaders, the
sampler and the CLI can be tested in seconds. Datasets whose split files name real classes
(CIFAR-FS, FC100, VGG Flower, CUB) get every real class; miniImageNet and tieredImageNet take
their classes from the files, so ``classes`` sets how many each split has.

Every writer returns the RGB pixels a loader should produce for each class
(``{class name: uint8 [n, H, W, 3]}``, in the order the loader keeps), where the format
stores pixels exactly.
"""

from __future__ import annotations

import csv
import io
import json
import pickle
from pathlib import Path

import numpy as np
from PIL import Image

SPLITS = ("train", "val", "test")
PACKAGED = Path(__file__).resolve().parents[1] / "src" / "cmlearn" / "app" / "data" / "splits"

# CIFAR-100's 20 superclasses and their fine classes (meta's names; both lists sorted there).
CIFAR100 = {
    "aquatic_mammals": ("beaver", "dolphin", "otter", "seal", "whale"),
    "fish": ("aquarium_fish", "flatfish", "ray", "shark", "trout"),
    "flowers": ("orchid", "poppy", "rose", "sunflower", "tulip"),
    "food_containers": ("bottle", "bowl", "can", "cup", "plate"),
    "fruit_and_vegetables": ("apple", "mushroom", "orange", "pear", "sweet_pepper"),
    "household_electrical_devices": ("clock", "keyboard", "lamp", "telephone", "television"),
    "household_furniture": ("bed", "chair", "couch", "table", "wardrobe"),
    "insects": ("bee", "beetle", "butterfly", "caterpillar", "cockroach"),
    "large_carnivores": ("bear", "leopard", "lion", "tiger", "wolf"),
    "large_man-made_outdoor_things": ("bridge", "castle", "house", "road", "skyscraper"),
    "large_natural_outdoor_scenes": ("cloud", "forest", "mountain", "plain", "sea"),
    "large_omnivores_and_herbivores": ("camel", "cattle", "chimpanzee", "elephant", "kangaroo"),
    "medium_mammals": ("fox", "porcupine", "possum", "raccoon", "skunk"),
    "non-insect_invertebrates": ("crab", "lobster", "snail", "spider", "worm"),
    "people": ("baby", "boy", "girl", "man", "woman"),
    "reptiles": ("crocodile", "dinosaur", "lizard", "snake", "turtle"),
    "small_mammals": ("hamster", "mouse", "rabbit", "shrew", "squirrel"),
    "trees": ("maple_tree", "oak_tree", "palm_tree", "pine_tree", "willow_tree"),
    "vehicles_1": ("bicycle", "bus", "motorcycle", "pickup_truck", "train"),
    "vehicles_2": ("lawn_mower", "rocket", "streetcar", "tank", "tractor"),
}
CIFAR_COARSE = sorted(CIFAR100)
CIFAR_FINE = sorted(f for fines in CIFAR100.values() for f in fines)


def packaged(name: str) -> dict:
    return json.loads((PACKAGED / f"{name}.json").read_text())


def picture(seed: tuple[int, ...], size: tuple[int, int], mode: str = "RGB") -> Image.Image:
    """A smooth random picture (JPEG keeps it recognisable), unique per ``seed``;
    ``size`` is (width, height)."""
    rng = np.random.default_rng(list(seed))
    w, h = size
    coarse = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    img = Image.fromarray(coarse).resize((w, h), Image.Resampling.BILINEAR)
    return img.convert(mode)


def jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def rgb(data: bytes) -> np.ndarray:
    """What Pillow decodes from ``data``, as RGB ``[H, W, 3]``."""
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"))


def write_fixture(name: str, root: Path, **kwargs) -> dict[str, np.ndarray]:
    """Write dataset ``name`` under ``root`` (see the module docstring)."""
    writers = {
        "miniimagenet": write_miniimagenet,
        "cifarfs": write_cifar,
        "fc100": write_cifar,
        "flower": write_flower,
        "cub": write_cub,
        "tieredimagenet": write_tieredimagenet,
    }
    return writers[name](Path(root), **kwargs)


# --- miniImageNet ---------------------------------------------------------------------------


def mini_classes(classes: tuple[int, int, int]) -> dict[str, list[str]]:
    out, n = {}, 0
    for split, k in zip(SPLITS, classes, strict=True):
        out[split] = [f"n{1000000 + 37 * (n + i):08d}" for i in range(k)]
        n += k
    return out


def write_miniimagenet(
    root: Path,
    layout: str = "csv",
    classes: tuple[int, int, int] = (6, 3, 3),
    per_class: int = 6,
    size: int = 84,
    val_name: str = "val",
) -> dict[str, np.ndarray]:
    """``layout``: ``csv`` (images/ + {split}.csv), ``folders`` ({split}/<wnid>/),
    ``full_size`` (mini_imagenet_full_size/{split}/<wnid>/) or ``pickle``
    (mini-imagenet-cache-{split}.pkl; ``val_name='validation'`` as learn2learn names it).
    The same JPEG bytes for every layout; pickles hold what Pillow decodes from them."""
    base = root / "miniimagenet"
    base.mkdir(parents=True, exist_ok=True)
    pixels: dict[str, np.ndarray] = {}
    for split, wnids in mini_classes(classes).items():
        rows, arrays, class_dict = [], [], {}
        for c, wnid in enumerate(wnids):
            decoded = []
            for j in range(per_class):
                data = jpeg(picture((int(wnid[1:]), j), (size, size)))
                fname = f"{wnid}{j + 1:08d}.jpg"
                if layout == "csv":
                    (base / "images").mkdir(exist_ok=True)
                    (base / "images" / fname).write_bytes(data)
                    rows.append((fname, wnid))
                elif layout in ("folders", "full_size"):
                    top = base / "mini_imagenet_full_size" if layout == "full_size" else base
                    (top / split / wnid).mkdir(parents=True, exist_ok=True)
                    (top / split / wnid / fname).write_bytes(data)
                decoded.append(rgb(data))
            pixels[wnid] = np.stack(decoded)
            class_dict[wnid] = list(range(c * per_class, (c + 1) * per_class))
            arrays.extend(decoded)
        if layout == "csv":
            with open(base / f"{split}.csv", "w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(["filename", "label"])
                writer.writerows(rows[::-1])  # any row order: the loader sorts by file name
        elif layout == "pickle":
            name = val_name if split == "val" else split
            blob = {"image_data": np.stack(arrays), "class_dict": class_dict}
            with open(base / f"mini-imagenet-cache-{name}.pkl", "wb") as f:
                pickle.dump(blob, f, protocol=pickle.HIGHEST_PROTOCOL)
    return pixels


# --- CIFAR-100 (CIFAR-FS, FC100) ------------------------------------------------------------


def write_cifar(root: Path, train: int = 4, test: int = 2, bytes_keys: bool = True) -> dict:
    """``cifar-100-python/{train,test,meta}`` with ``train`` + ``test`` images of every one of
    the 100 fine classes, interleaved as in the real files. Python-2-style pickles:
    ``bytes`` keys and names (``bytes_keys=False``: a Python 3 copy with ``str``)."""
    base = root / "cifar-100-python"
    base.mkdir(parents=True, exist_ok=True)
    key = (lambda s: s.encode()) if bytes_keys else (lambda s: s)
    coarse_of = {f: CIFAR_COARSE.index(c) for c, fines in CIFAR100.items() for f in fines}
    pixels: dict[str, list[np.ndarray]] = {f: [] for f in CIFAR_FINE}
    for part, per_class in (("train", train), ("test", test)):
        fine = np.tile(np.arange(100), per_class)  # class 0, 1, …, 99, 0, 1, …
        rng = np.random.default_rng(len(part))
        data = rng.integers(0, 256, (len(fine), 3072), dtype=np.uint8)
        for row, label in zip(data, fine, strict=True):
            pixels[CIFAR_FINE[label]].append(row.reshape(3, 32, 32).transpose(1, 2, 0))
        blob = {
            key("batch_label"): key(f"{part} batch 1 of 1"),
            key("filenames"): [key(f"img_{i:05d}.png") for i in range(len(fine))],
            key("fine_labels"): fine.tolist(),
            key("coarse_labels"): [coarse_of[CIFAR_FINE[f]] for f in fine],
            key("data"): data,
        }
        with open(base / part, "wb") as f:
            pickle.dump(blob, f, protocol=2)
    meta = {
        key("fine_label_names"): [key(n) for n in CIFAR_FINE],
        key("coarse_label_names"): [key(n) for n in CIFAR_COARSE],
    }
    with open(base / "meta", "wb") as f:
        pickle.dump(meta, f, protocol=2)
    return {name: np.stack(rows) for name, rows in pixels.items()}


# --- VGG Flower -----------------------------------------------------------------------------


def write_flower(root: Path, per_class: int = 3, size: tuple[int, int] = (40, 30)) -> dict:
    """``vgg_flower/jpg/image_NNNNN.jpg`` for ``per_class`` images of each of the 102 classes
    (labels interleaved, as in the real file order) and ``imagelabels.mat`` (1-based)."""
    from scipy.io import savemat

    base = root / "vgg_flower"
    (base / "jpg").mkdir(parents=True, exist_ok=True)
    labels = np.tile(np.arange(1, 103), per_class)
    for i, label in enumerate(labels, start=1):
        data = jpeg(picture((int(label), i), size))
        (base / "jpg" / f"image_{i:05d}.jpg").write_bytes(data)
    savemat(base / "imagelabels.mat", {"labels": labels[None, :].astype(np.uint8)})
    return {}


# --- CUB-200-2011 ---------------------------------------------------------------------------


def write_cub(root: Path, per_class: int = 3, size: tuple[int, int] = (50, 40)) -> dict:
    """``cub/CUB_200_2011/images/<class>/*.jpg`` for the 200 classes of the packaged split
    (some greyscale, as a few real photographs are) and ``classes.txt``."""
    spec = packaged("cub")
    names = sorted(c for split in SPLITS for c in spec[split])
    base = root / "cub" / "CUB_200_2011"
    for number, name in enumerate(names, start=1):
        folder = base / "images" / name
        folder.mkdir(parents=True, exist_ok=True)
        for j in range(per_class):
            mode = "L" if j == 0 and number % 50 == 0 else "RGB"
            data = jpeg(picture((number, j), size, mode))
            (folder / f"{name.split('.', 1)[1]}_{number:04d}_{j:04d}.jpg").write_bytes(data)
    lines = [f"{i} {name}" for i, name in enumerate(names, start=1)]
    (base / "classes.txt").write_text("\n".join(lines) + "\n")
    return {}


# --- tieredImageNet -------------------------------------------------------------------------


def write_tieredimagenet(
    root: Path,
    layout: str = "npz",
    classes: tuple[int, int, int] = (6, 3, 3),
    per_class: int = 5,
    folder: str = "tiered_imagenet",
    labels_key: str = "label_specific",
) -> dict[str, np.ndarray]:
    """Per split ``{split}_labels.pkl`` (Python-2-style: ``bytes`` keys; ``label_specific``,
    ``label_general`` and their ``_str`` names) and ``{split}_images.npz`` (``layout=npz``,
    BGR as renmengye's ``decompress`` writes it) or ``{split}_images_png.pkl``
    (``layout=png``); ``both`` writes both. Images are shuffled across classes."""
    base = root / folder
    base.mkdir(parents=True, exist_ok=True)
    pixels: dict[str, np.ndarray] = {}
    start = 0
    for split, k in zip(SPLITS, classes, strict=True):
        rng = np.random.default_rng(start + 1)
        labels = rng.permutation(np.repeat(np.arange(k), per_class)).astype(np.int32)
        names = [f"{split} class {start + c}" for c in range(k)]
        images = np.stack(
            [np.asarray(picture((start + int(c), i), (84, 84))) for i, c in enumerate(labels)]
        )
        for c in range(k):
            pixels[names[c]] = images[labels == c]
        blob = {
            labels_key.encode(): labels,
            b"label_general": np.zeros_like(labels),
            b"label_specific_str": [n.encode() for n in names],
            b"label_general_str": [b"general"],
        }
        with open(base / f"{split}_labels.pkl", "wb") as f:
            pickle.dump(blob, f, protocol=2)
        if layout in ("npz", "both"):
            np.savez(base / f"{split}_images.npz", images=images[..., ::-1])  # BGR
        if layout in ("png", "both"):
            encoded = [np.frombuffer(png(Image.fromarray(im)), dtype=np.uint8) for im in images]
            with open(base / f"{split}_images_png.pkl", "wb") as f:
                pickle.dump(encoded, f, protocol=2)
        start += k
    return pixels


if __name__ == "__main__":  # python -m tests.image_fixtures ROOT: every dataset, for a smoke run
    import sys

    target = Path(sys.argv[1] if len(sys.argv) > 1 else "fixtures")
    write_fixture("miniimagenet", target, classes=(5, 5, 5), per_class=6)
    write_fixture("tieredimagenet", target, classes=(5, 5, 5), per_class=6)
    write_fixture("cifarfs", target)  # also FC100: both read CIFAR-100
    write_fixture("flower", target, per_class=6)
    write_fixture("cub", target, per_class=6)
    print(f"fixtures written under {target}")
