"""The few-shot RGB datasets (miniImageNet, tieredImageNet, CIFAR-FS, FC100, VGG Flower, CUB),
their catalog (list / check / fetch) and the ``cmlearn data`` commands, on tiny fixtures
written in each dataset's real on-disk format (``tests/image_fixtures.py``).

Fixtures are written once per module; a test that damages one copies it first. Every test
uses its own cache folder.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pickle
import shutil
import tarfile
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from cmlearn import CmlearnError
from cmlearn.app.cli import main
from cmlearn.app.config import TaskConfig
from cmlearn.app.data import catalog, images
from cmlearn.app.data.images import Prep
from cmlearn.core.registry import DATASETS, SAMPLERS
from cmlearn.core.tasks import ClassificationSource, generator
from tests.image_fixtures import (
    CIFAR100,
    CIFAR_COARSE,
    CIFAR_FINE,
    jpeg,
    packaged,
    picture,
    write_fixture,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def load(name: str, root: Path, cache: Path, **options):
    return DATASETS.get(name).build(DATASETS.make_options(name, options), root, cache)


def class_pixels(ds, name: str) -> np.ndarray:
    """The pool rows of class ``name`` as ``[n, H, W, 3]``."""
    i = ds.pool.names.index(name)
    start, n = int(ds.pool.offsets[i]), int(ds.pool.counts[i])
    return ds.pool.images[start : start + n].numpy().transpose(0, 2, 3, 1)


def split_names(ds, split: str) -> list[str]:
    return [ds.pool.names[i] for i in ds.splits[split].classes.tolist()]


def one_line_error(excinfo) -> str:
    text = str(excinfo.value)
    assert "\n" not in text and text
    return text


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    """One data root holding every dataset (miniImageNet as CSV + images, tieredImageNet as
    npz and PNG pickles), and the pixels each fixture wrote."""
    root = tmp_path_factory.mktemp("data")
    pixels = {
        "miniimagenet": write_fixture("miniimagenet", root, layout="csv"),
        "cifar": write_fixture("cifarfs", root),
        "tieredimagenet": write_fixture("tieredimagenet", root, layout="both"),
    }
    write_fixture("flower", root)
    write_fixture("cub", root)
    return SimpleNamespace(root=root, pixels=pixels)


def copy_of(roots, tmp_path: Path, *folders: str) -> Path:
    root = tmp_path / "data"
    for folder in folders:
        shutil.copytree(roots.root / folder, root / folder)
    return root


# --- the shipped split files ----------------------------------------------------------------


def test_split_files_are_the_published_ones():
    fs = packaged("cifarfs")
    assert [len(fs[s]) for s in ("train", "val", "test")] == [64, 16, 20]
    assert sorted(fs["train"] + fs["val"] + fs["test"]) == CIFAR_FINE  # disjoint, all 100
    assert {"bear", "lion", "tiger"} <= set(fs["train"]) and "whale" in fs["test"]
    fc = packaged("fc100")
    assert [len(fc[s]) for s in ("train", "val", "test")] == [12, 4, 4]
    assert sorted(fc["train"] + fc["val"] + fc["test"]) == CIFAR_COARSE
    assert fc["test"] == ["aquatic_mammals", "insects", "medium_mammals", "people"]
    cub = packaged("cub")
    everything = sorted(cub["train"] + cub["val"] + cub["test"])
    assert [len(cub[s]) for s in ("train", "val", "test")] == [100, 50, 50]
    assert [int(c[:3]) for c in everything] == list(range(1, 201))
    for i, c in enumerate(everything):  # Chen et al.'s rule on the sorted class folders
        assert c in cub["train" if i % 2 == 0 else "val" if i % 4 == 1 else "test"]
    fl = packaged("flower")
    assert fl["val"] == [10, 16, 17, 23, 26, 47, 53, 56, 57, 62, 82, 83, 86, 97, 102]
    assert fl["test"] == [5, 9, 15, 19, 35, 40, 41, 42, 45, 46, 65, 85, 89, 94, 96, 98]
    assert sorted(fl["train"] + fl["val"] + fl["test"]) == list(range(1, 103))
    assert len(fl["train"]) == 71 and len(fl["names"]) == 102
    for name in ("cifarfs", "fc100", "cub", "flower"):
        assert "source" in packaged(name)


# --- miniImageNet ---------------------------------------------------------------------------


def test_miniimagenet_three_layouts_give_the_same_pool(roots, tmp_path):
    csv_root = copy_of(roots, tmp_path, "miniimagenet")
    reference = load("miniimagenet", csv_root, tmp_path / "c0")
    assert [len(reference.splits[s]) for s in ("train", "val", "test")] == [6, 3, 3]
    assert reference.input_shape == (3, 84, 84) and reference.mean is None
    for name, pixels in roots.pixels["miniimagenet"].items():
        assert np.array_equal(class_pixels(reference, name), pixels)
    layouts = [
        ("folders", {}),
        ("full_size", {}),
        ("pickle", {}),
        ("pickle", {"val_name": "validation"}),  # learn2learn's name
    ]
    for i, (layout, kwargs) in enumerate(layouts):
        root = tmp_path / f"r{i}"
        write_fixture("miniimagenet", root, layout=layout, **kwargs)
        ds = load("miniimagenet", root, tmp_path / f"c{i + 1}")
        assert ds.pool.names == reference.pool.names, layout
        assert torch.equal(ds.pool.images, reference.pool.images), layout
        assert torch.equal(ds.pool.counts, reference.pool.counts)
        for split in ("train", "val", "test"):
            assert split_names(ds, split) == split_names(reference, split)
    assert load("miniimagenet", root, tmp_path / "cz", layout="pickle").pool.names


def test_miniimagenet_resizes_and_caches(roots, tmp_path, monkeypatch):
    root = copy_of(roots, tmp_path, "miniimagenet")
    small = load("miniimagenet", root, tmp_path / "c", image_size=42)
    assert small.input_shape == (3, 42, 42)
    first = small.pool.names[0]
    expected = Image.open(sorted((root / "miniimagenet" / "images").glob(f"{first}*"))[0])
    assert np.array_equal(
        class_pixels(small, first)[0],
        np.asarray(expected.convert("RGB").resize((42, 42), Image.Resampling.BILINEAR)),
    )

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again instead of reading the cache")

    monkeypatch.setattr(images, "decode", no_decoding)
    again = load("miniimagenet", root, tmp_path / "c", image_size=42)
    assert torch.equal(again.pool.images, small.pool.images)


# --- CIFAR-FS and FC100 ---------------------------------------------------------------------


def test_cifarfs_and_fc100_from_the_cifar100_pickles(roots, tmp_path):
    cache = tmp_path / "c"
    fs = load("cifarfs", roots.root, cache)
    assert [len(fs.splits[s]) for s in ("train", "val", "test")] == [64, 16, 20]
    assert fs.pool.names == tuple(CIFAR_FINE) and fs.input_shape == (3, 32, 32)
    assert fs.pool.counts.tolist() == [6] * 100  # 4 train + 2 test rows per class
    spec = packaged("cifarfs")
    for split in ("train", "val", "test"):
        assert split_names(fs, split) == spec[split]
    for name in ("apple", "whale", "worm"):  # train rows then test rows, R/G/B planes
        assert np.array_equal(class_pixels(fs, name), roots.pixels["cifar"][name])
    fc = load("fc100", roots.root, cache)
    assert [len(fc.splits[s]) for s in ("train", "val", "test")] == [60, 20, 20]
    supers = packaged("fc100")
    for split in ("train", "val", "test"):
        want = sorted(f for c in supers[split] for f in CIFAR100[c])
        assert sorted(split_names(fc, split)) == want
    assert torch.equal(fc.pool.images, fs.pool.images)  # one CIFAR-100 pool for both


def test_cifar_reads_python3_pickles_with_str_keys(tmp_path):
    write_fixture("cifarfs", tmp_path / "a")
    write_fixture("cifarfs", tmp_path / "b", bytes_keys=False)
    a = load("cifarfs", tmp_path / "a", tmp_path / "ca")
    b = load("cifarfs", tmp_path / "b", tmp_path / "cb")
    assert a.pool.names == b.pool.names and torch.equal(a.pool.images, b.pool.images)


# --- VGG Flower and CUB ---------------------------------------------------------------------


def test_flower_split_by_class_id(roots, tmp_path):
    ds = load("flower", roots.root, tmp_path / "c")
    assert [len(ds.splits[s]) for s in ("train", "val", "test")] == [71, 15, 16]
    assert ds.input_shape == (3, 32, 32) and ds.pool.counts.tolist() == [3] * 102
    assert ds.pool.names[0] == "001.pink primrose"
    assert split_names(ds, "val")[0] == "010.globe thistle"
    # image_00001.jpg has label 1; image_00103.jpg is the next image of class 1
    jpg = roots.root / "vgg_flower" / "jpg"
    for row, number in ((0, 1), (1, 103)):
        with Image.open(jpg / f"image_{number:05d}.jpg") as img:
            want = np.asarray(img.convert("RGB").resize((32, 32), Image.Resampling.BICUBIC))
        assert np.array_equal(class_pixels(ds, "001.pink primrose")[row], want)


def test_prep_is_torchvision_resize_then_center_crop():
    """torchvision's Resize(126) on a 50×40 image gives 157×126 (long side truncated), and
    CenterCrop(84) then crops at left round(36.5) = 36, top round(21.0) = 21."""
    img = picture((1, 2), (50, 40))
    want = img.resize((157, 126), Image.Resampling.BILINEAR).crop((36, 21, 120, 105))
    got = Prep(84, "bilinear", 126).apply(img)
    assert np.array_equal(got, np.asarray(want).transpose(2, 0, 1))
    tall = picture((1, 3), (40, 50))
    want = tall.resize((126, 157), Image.Resampling.BILINEAR).crop((21, 36, 105, 120))
    assert np.array_equal(
        Prep(84, "bilinear", 126).apply(tall), np.asarray(want).transpose(2, 0, 1)
    )
    grey = picture((1, 4), (30, 30), "L")  # greyscale → the same value in R, G and B
    out = Prep(16).apply(grey)
    assert out.shape == (3, 16, 16) and np.array_equal(out[0], out[2])


def test_cub_center_crop_and_plain_resize(roots, tmp_path):
    ds = load("cub", roots.root, tmp_path / "c")
    assert [len(ds.splits[s]) for s in ("train", "val", "test")] == [100, 50, 50]
    assert ds.input_shape == (3, 84, 84) and ds.pool.counts.tolist() == [3] * 200
    spec = packaged("cub")
    assert split_names(ds, "test") == spec["test"]
    folder = roots.root / "cub" / "CUB_200_2011" / "images" / "050.Eared_Grebe"
    first = sorted(folder.iterdir())[0]  # a greyscale photograph
    with Image.open(first) as img:
        assert img.mode == "L"
        want = img.convert("RGB").resize((157, 126), Image.Resampling.BILINEAR)
    got = class_pixels(ds, "050.Eared_Grebe")[0]
    assert np.array_equal(got, np.asarray(want.crop((36, 21, 120, 105))))
    squashed = load("cub", roots.root, tmp_path / "c", crop="resize")
    with Image.open(first) as img:
        want = img.convert("RGB").resize((84, 84), Image.Resampling.BILINEAR)
    assert np.array_equal(class_pixels(squashed, "050.Eared_Grebe")[0], np.asarray(want))


# --- tieredImageNet -------------------------------------------------------------------------


def test_tieredimagenet_npz_and_png_agree_and_are_memory_mapped(roots, tmp_path):
    cache = tmp_path / "c"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the read-only map must not warn
        ds = load("tieredimagenet", roots.root, cache)
    assert [len(ds.splits[s]) for s in ("train", "val", "test")] == [6, 3, 3]
    for name, pixels in roots.pixels["tieredimagenet"].items():
        assert np.array_equal(class_pixels(ds, name), pixels)  # BGR npz → RGB, regrouped
    (npy,) = cache.glob("tieredimagenet-*.npy")
    maps = Path("/proc/self/maps")
    if maps.exists():
        assert str(npy) in maps.read_text()
    png = load("tieredimagenet", roots.root, cache, layout="png")
    assert png.pool.names == ds.pool.names and torch.equal(png.pool.images, ds.pool.images)
    kept = load("tieredimagenet", roots.root, cache, npz_channels="rgb")
    assert torch.equal(kept.pool.images, ds.pool.images.flip(1))
    batch = (
        SAMPLERS.get("classes")
        .build(ds, task(), torch.device("cpu"))
        .sample(2, generator("test", 0), "test")
    )
    assert batch.support_x.shape == (2, 3, 3, 84, 84)
    mtime = npy.stat().st_mtime_ns
    load("tieredimagenet", roots.root, cache)
    assert npy.stat().st_mtime_ns == mtime  # opened again, not rebuilt


def test_tieredimagenet_metaoptnet_labels_and_folder_name(tmp_path):
    pixels = write_fixture(
        "tieredimagenet", tmp_path, folder="tiered-imagenet", labels_key="labels"
    )
    ds = load("tieredimagenet", tmp_path, tmp_path / "c")
    for name, want in pixels.items():
        assert np.array_equal(class_pixels(ds, name), want)


# --- preprocessing and the sampler ----------------------------------------------------------


def task(ways: int = 3, shots: int = 1, queries: int = 2) -> TaskConfig:
    return TaskConfig(ways=ways, shots=shots, queries=queries, eval_queries=queries)


def test_imagenet_normalisation_is_applied_after_dividing_by_255(roots, tmp_path):
    cache = tmp_path / "c"
    plain = load("cifarfs", roots.root, cache)
    normed = load("cifarfs", roots.root, cache, normalize="imagenet")
    assert plain.mean is None and normed.mean == (0.485, 0.456, 0.406)
    device = torch.device("cpu")
    a = SAMPLERS.get("classes").build(plain, task(), device).sample(4, generator("test", 1))
    b = SAMPLERS.get("classes").build(normed, task(), device).sample(4, generator("test", 1))
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    assert torch.allclose(b.query_x, (a.query_x - mean) / std, atol=1e-6)
    assert torch.equal(a.support_y, b.support_y)
    assert float(a.support_x.min()) >= 0 and float(a.support_x.max()) <= 1


def test_too_few_images_for_shots_plus_queries(roots, tmp_path):
    ds = load("cub", roots.root, tmp_path / "c")
    with pytest.raises(CmlearnError) as err:
        ClassificationSource(ds, ways=5, shots=1, queries=15, eval_queries=15)
    assert "1 shots + 15 queries = 16" in one_line_error(err) and "only 3" in str(err.value)


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("cub", {"crop": "middle"}, "crop must be one of"),
        ("cifarfs", {"normalize": "zscore"}, "normalize must be one of"),
        ("miniimagenet", {"layout": "hdf5"}, "layout must be one of"),
        ("flower", {"resample": "nearest"}, "resample must be one of"),
        ("tieredimagenet", {"npz_channels": "grb"}, "npz_channels"),
    ],
)
def test_bad_options_are_one_line_errors(name, options, message):
    with pytest.raises(CmlearnError) as err:
        DATASETS.make_options(name, options)
    assert message in one_line_error(err)


# --- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected", "hint"),
    [
        ("miniimagenet", "miniimagenet", "docs/datasets.md"),
        ("tieredimagenet", "tiered_imagenet", "docs/datasets.md"),
        ("cifarfs", "cifar-100-python", "cmlearn data fetch cifarfs"),
        ("fc100", "cifar-100-python", "cmlearn data fetch fc100"),
        ("flower", "vgg_flower", "cmlearn data fetch flower"),
        ("cub", "cub", "cmlearn data fetch cub"),
    ],
)
def test_missing_dataset_folder_says_what_goes_where(name, expected, hint, tmp_path):
    with pytest.raises(CmlearnError) as err:
        load(name, tmp_path, tmp_path / "c")
    text = one_line_error(err)
    assert str(tmp_path / expected) in text and hint in text


def test_missing_split_files(roots, tmp_path):
    root = copy_of(roots, tmp_path, "miniimagenet", "tiered_imagenet", "vgg_flower")
    (root / "miniimagenet" / "val.csv").unlink()
    with pytest.raises(CmlearnError) as err:
        load("miniimagenet", root, tmp_path / "c", layout="csv")
    assert "val.csv" in one_line_error(err)
    with pytest.raises(CmlearnError) as err:  # auto: the layout begun, and what it lacks
        load("miniimagenet", root, tmp_path / "c")
    assert "(csv layout)" in one_line_error(err) and "val.csv" in str(err.value)
    (root / "tiered_imagenet" / "test_labels.pkl").unlink()
    with pytest.raises(CmlearnError) as err:
        load("tieredimagenet", root, tmp_path / "c")
    assert "test_labels.pkl" in one_line_error(err)
    (root / "vgg_flower" / "imagelabels.mat").unlink()
    with pytest.raises(CmlearnError) as err:
        load("flower", root, tmp_path / "c")
    assert "imagelabels.mat" in one_line_error(err)


def test_unsupported_layout_is_named(tmp_path):
    (tmp_path / "miniimagenet").mkdir()
    (tmp_path / "miniimagenet" / "mini-imagenet.h5").write_bytes(b"x")
    with pytest.raises(CmlearnError) as err:
        load("miniimagenet", tmp_path, tmp_path / "c")
    assert "expected mini-imagenet-cache-{train,val,test}.pkl" in one_line_error(err)
    (tmp_path / "tiered_imagenet").mkdir()
    with pytest.raises(CmlearnError) as err:
        load("tieredimagenet", tmp_path, tmp_path / "c")
    assert "_images.npz" in one_line_error(err)


def test_corrupt_image_is_named(roots, tmp_path):
    root = copy_of(roots, tmp_path, "cub", "vgg_flower")
    bad = sorted((root / "cub" / "CUB_200_2011" / "images" / "017.Cardinal").iterdir())[1]
    bad.write_bytes(bad.read_bytes()[:200])  # a truncated JPEG
    with pytest.raises(CmlearnError) as err:
        load("cub", root, tmp_path / "c")
    assert str(bad) in one_line_error(err) and "corrupt" in str(err.value)
    junk = root / "vgg_flower" / "jpg" / "image_00007.jpg"
    junk.write_bytes(b"not a picture")
    with pytest.raises(CmlearnError) as err:
        load("flower", root, tmp_path / "c")
    assert str(junk) in one_line_error(err)
    (root / "vgg_flower" / "jpg" / "image_00008.jpg").unlink()
    with pytest.raises(CmlearnError) as err:
        load("flower", root, tmp_path / "c")
    assert "image_00008.jpg" in one_line_error(err)


def test_pickles_of_the_wrong_shape(roots, tmp_path):
    root = tmp_path / "data"
    write_fixture("miniimagenet", root, layout="pickle", per_class=2)
    path = root / "miniimagenet" / "mini-imagenet-cache-train.pkl"
    blob = pickle.loads(path.read_bytes())
    blob["image_data"] = blob["image_data"][..., 0]  # [N, 84, 84]: no channels
    path.write_bytes(pickle.dumps(blob))
    with pytest.raises(CmlearnError) as err:
        load("miniimagenet", root, tmp_path / "c")
    assert str(path) in one_line_error(err) and "[N, H, W, 3]" in str(err.value)
    cifar = copy_of(roots, tmp_path / "x", "cifar-100-python")
    part = cifar / "cifar-100-python" / "test"
    blob = pickle.loads(part.read_bytes(), encoding="bytes")
    blob[b"data"] = blob[b"data"][:, :1000]
    part.write_bytes(pickle.dumps(blob, protocol=2))
    with pytest.raises(CmlearnError) as err:
        load("cifarfs", cifar, tmp_path / "c")
    assert str(part) in one_line_error(err) and "3072" in str(err.value)
    del blob[b"fine_labels"]
    part.write_bytes(pickle.dumps(blob, protocol=2))
    with pytest.raises(CmlearnError) as err:
        load("fc100", cifar, tmp_path / "c")
    assert "'fine_labels'" in one_line_error(err)


def test_pickles_that_would_run_code_are_refused(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("owned",))

    root = tmp_path / "data"
    write_fixture("cifarfs", root)
    (root / "cifar-100-python" / "meta").write_bytes(pickle.dumps(Payload()))
    with pytest.raises(CmlearnError) as err:
        load("cifarfs", root, tmp_path / "c")
    assert "builtins.print" in one_line_error(err)


def test_truncated_npz_is_named(roots, tmp_path):
    root = copy_of(roots, tmp_path, "tiered_imagenet")
    npz = root / "tiered_imagenet" / "val_images.npz"
    npz.write_bytes(npz.read_bytes()[: len(npz.read_bytes()) // 2])
    with pytest.raises(CmlearnError) as err:
        load("tieredimagenet", root, tmp_path / "c", layout="npz")
    assert str(npz) in one_line_error(err)
    assert not list((tmp_path / "c").glob("*.npy")) and not list((tmp_path / "c").glob(".*"))


# --- the catalog: list, check, fetch --------------------------------------------------------


def test_list_datasets(roots, tmp_path):
    rows = {r["name"]: r for r in catalog.list_datasets(roots.root, tmp_path / "c")}
    assert set(rows) == set(catalog.catalog_entries())
    for name in ("miniimagenet", "tieredimagenet", "cifarfs", "fc100", "flower", "cub"):
        assert rows[name]["present"] and rows[name]["valid"] and not rows[name]["cached"]
    assert not rows["omniglot"]["present"] and rows["omniglot"]["problem"]
    assert rows["miniimagenet"]["download"] == "manual" and rows["cub"]["download"] == "automatic"
    load("flower", roots.root, tmp_path / "c")
    rows = {r["name"]: r for r in catalog.list_datasets(roots.root, tmp_path / "c")}
    assert rows["flower"]["cached"] and not rows["cub"]["cached"]


def test_check_dataset_compares_checksums_and_counts(roots, tmp_path, recatalog):
    with pytest.raises(CmlearnError) as err:
        catalog.check_dataset("cifarfs", roots.root, tmp_path / "c")
    text = one_line_error(err)
    assert (
        "cifar-100-python/train has MD5" in text and "train has 384 images, expected 38400" in text
    )
    # the same check against a catalog entry that describes the fixture passes
    base = roots.root / "cifar-100-python"
    files = tuple(
        catalog.KnownFile(f"cifar-100-python/{p}", hashlib.md5((base / p).read_bytes()).hexdigest())
        for p in ("train", "test", "meta")
    )
    recatalog("cifarfs", files=files, images=(384, 96, 120))
    report = catalog.check_dataset("cifarfs", roots.root, tmp_path / "c")
    assert report["splits"]["val"] == {"classes": 16, "images": 96}
    assert all(f["ok"] and len(f["sha256"]) == 64 for f in report["files"])
    recatalog("flower", total=306)
    report = catalog.check_dataset("flower", roots.root, tmp_path / "c", checksums=False)
    assert report["images"] == 306 and report["files"] == []


@pytest.fixture
def cifar_archive(roots, tmp_path):
    """A ``cifar-100-python.tar.gz`` of the fixture in a mirror folder, and its MD5."""
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    archive = mirror / "cifar-100-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(roots.root / "cifar-100-python", arcname="cifar-100-python")
    return archive, hashlib.md5(archive.read_bytes()).hexdigest()


def with_md5(recatalog, name: str, md5: str) -> None:
    download = dataclasses.replace(catalog.get(name).downloads[0], md5=md5)
    recatalog(name, downloads=(download,))


def test_fetch_verifies_and_unpacks(cifar_archive, tmp_path, recatalog):
    archive, md5 = cifar_archive
    root = tmp_path / "fresh" / "data"
    with_md5(recatalog, "cifarfs", md5)
    rows = catalog.fetch_dataset("cifarfs", root, archive.as_uri(), progress=False)
    assert rows[0]["status"] == "fetched"
    assert sorted(p.name for p in root.iterdir()) == ["cifar-100-python"]  # no temporaries
    assert load("cifarfs", root, tmp_path / "c").pool.counts.tolist() == [6] * 100
    again = catalog.fetch_dataset("cifarfs", root, archive.parent.as_uri() + "/", progress=False)
    assert again[0]["status"] == "present"


def test_fetch_with_a_bad_checksum_leaves_nothing(cifar_archive, tmp_path, recatalog):
    archive, md5 = cifar_archive
    root = tmp_path / "fresh" / "data"
    with pytest.raises(CmlearnError) as err:  # the real CIFAR-100 MD5, not the fixture's
        catalog.fetch_dataset("cifarfs", root, archive.as_uri(), progress=False)
    assert f"has MD5 {md5}, expected eb9058c3a382ffc7106e4002c42a8d85" in one_line_error(err)
    assert not (tmp_path / "fresh").exists()
    root.mkdir(parents=True)
    with pytest.raises(CmlearnError):
        catalog.fetch_dataset("cifarfs", root, archive.as_uri(), progress=False)
    assert list(root.iterdir()) == []
    # a damaged archive with the right MD5: nothing unpacked either
    broken = archive.parent / "broken.tar.gz"
    broken.write_bytes(archive.read_bytes()[:300])
    with_md5(recatalog, "cifarfs", hashlib.md5(broken.read_bytes()).hexdigest())
    with pytest.raises(CmlearnError) as err:
        catalog.fetch_dataset("cifarfs", root, broken.as_uri(), progress=False)
    assert "corrupt or truncated" in one_line_error(err)
    assert list(root.iterdir()) == []


def test_fetch_refusals(tmp_path):
    with pytest.raises(CmlearnError) as err:
        catalog.fetch_dataset("miniimagenet", tmp_path)
    assert "cannot be downloaded automatically" in one_line_error(err)
    with pytest.raises(CmlearnError) as err:
        catalog.fetch_dataset("flower", tmp_path, "file:///nowhere/102flowers.tgz")
    assert "ending in '/'" in one_line_error(err)
    with pytest.raises(CmlearnError) as err:
        catalog.fetch_dataset("cub", tmp_path, (tmp_path / "missing.tgz").as_uri())
    assert "cannot download" in one_line_error(err)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(CmlearnError) as err:
        catalog.fetch_dataset("imagenet", tmp_path)
    assert "unknown dataset" in one_line_error(err)


# --- the command line -----------------------------------------------------------------------


@pytest.fixture
def cli(capsys, tmp_path, monkeypatch):
    """``cmlearn ARGS`` in this process with its own cache: (exit code, stdout, stderr)."""
    monkeypatch.setenv("CMLEARN_CACHE", str(tmp_path / "cli-cache"))

    def run(*args: str) -> tuple[int, str, str]:
        code = main(list(args))
        out, err = capsys.readouterr()
        return code, out, err

    return run


def test_cli_data_list_check_fetch(cli, roots, cifar_archive, tmp_path, recatalog):
    code, out, _ = cli("data", "list", "--data-root", str(roots.root))
    assert code == 0 and out.splitlines()[0] == f"data root: {roots.root}"
    line = next(line for line in out.splitlines() if line.startswith("  cub "))
    assert line.split()[1:3] == ["ok", "-"]
    code, out, _ = cli("data", "list", "--json", "--data-root", str(roots.root))
    assert code == 0 and {r["name"] for r in json.loads(out)} == set(catalog.catalog_entries())

    code, out, err = cli("data", "check", "flower", "--data-root", str(roots.root))
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert err.startswith("cmlearn: error: flower in ") and "expected 8189" in err
    recatalog("flower", total=306)
    code, out, _ = cli("data", "check", "flower", "--no-checksums", "--data-root", str(roots.root))
    assert (
        code == 0
        and "flower val: 15 classes, 45 images" in out
        and out.endswith("ok, 306 images (" + str(roots.root / "vgg_flower") + ")\n")
    )

    archive, md5 = cifar_archive
    root = tmp_path / "fetched"
    code, _, err = cli(
        "data", "fetch", "fc100", "--url", archive.as_uri(), "--data-root", str(root)
    )
    assert code == 2 and "expected eb9058c3a382ffc7106e4002c42a8d85" in err and not root.exists()
    with_md5(recatalog, "fc100", md5)
    code, out, _ = cli(
        "data", "fetch", "fc100", "--quiet", "--url", archive.as_uri(), "--data-root", str(root)
    )
    assert code == 0 and out == f"cifar-100-python.tar.gz: fetched -> {root / 'cifar-100-python'}\n"
    code, _, err = cli("data", "fetch", "nope", "--data-root", str(root))
    assert code == 2 and "unknown dataset 'nope'" in err
    code, _, err = cli("data")
    assert code == 2 and "required" in err


def test_image_bytes_decode_like_files(tmp_path):
    data = jpeg(picture((9, 9), (20, 10)))
    path = tmp_path / "a.jpg"
    path.write_bytes(data)
    assert np.array_equal(images.decode(data, Prep(8)), images.decode(path, Prep(8)))
    with pytest.raises(CmlearnError) as err:
        images.decode(b"not an image", Prep(8), "item[3]")
    assert "item[3]" in one_line_error(err)
