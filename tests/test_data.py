"""The Omniglot data layer (zips → cached pool → splits) and the N-way K-shot sampler.

Most tests run on a tiny Omniglot in the official layout (14 characters of 20 1-bit 105×105
PNGs), written once and copied into each test that damages it; one module-scoped fixture
decodes the real zips (``$CMLEARN_DATA``, else the data folder CI provides beside the
checkout; skipped where absent).
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from cmlearn import CmlearnError
from cmlearn.app.cli import main
from cmlearn.app.data import ClassDataset, ClassSplit, graphs
from cmlearn.app.data import omniglot as og
from cmlearn.app.data.cache import CACHE_FORMAT, source_key
from cmlearn.core.registry import DATASETS
from cmlearn.core.tasks import ClassificationSource, TaskBatch, generator

# The real data: CMLEARN_DATA, else the data folder CI provides beside the checkout.
REAL = Path(
    os.environ.get("CMLEARN_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data"
)
PRESET = "omniglot-5w1s-cpu"  # 5-way 1-shot, 5 train / 15 eval queries per class

# The tiny Omniglot: alphabet -> characters, per zip; and its Vinyals-format split files.
CHARS = {
    "background": {"Alpha": 3, "Beta": 4, "Gamma": 2},
    "evaluation": {"Delta": 3, "Epsilon": 2},
}
SPLIT_FILES = {
    "train": {"background": {"Alpha": [1, 2, 3], "Gamma": [1, 2]}, "evaluation": {"Delta": [1]}},
    "val": {"background": {"Beta": [1, 2, 3, 4]}, "evaluation": {}},
    "test": {"background": {}, "evaluation": {"Delta": [2, 3], "Epsilon": [1, 2]}},
}
N_CHARS = 14


def char_name(zip_set: str, alphabet: str, number: int) -> str:
    return f"images_{zip_set}/{alphabet}/character{number:02d}"


def split_names(split: str) -> set[str]:
    return {
        char_name(s, alphabet, n)
        for s, alphabets in SPLIT_FILES[split].items()
        for alphabet, numbers in alphabets.items()
        for n in numbers
    }


def drawing(seed: int, code: int, number: int) -> Image.Image:
    """A 1-bit 105×105 drawing: black random strokes on white, unique per (seed, code, number)."""
    rng = np.random.default_rng([seed, code, number])
    img = Image.new("1", (105, 105), 1)
    draw = ImageDraw.Draw(img)
    for _ in range(3):
        points = [tuple(int(v) for v in rng.integers(8, 97, 2)) for _ in range(3)]
        draw.line(points, fill=0, width=int(rng.integers(3, 8)))
    return img


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def write_zip(root: Path, zip_set: str, seed: int = 0) -> Path:
    """``images_<set>.zip`` in the official layout (stored, like the real zips)."""
    path = root / "omniglot" / f"images_{zip_set}.zip"
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        code = 100 if zip_set == "background" else 500
        for alphabet, count in CHARS[zip_set].items():
            for n in range(1, count + 1):
                code += 1
                for d in range(1, 21):
                    name = f"{char_name(zip_set, alphabet, n)}/{code:04d}_{d:02d}.png"
                    archive.writestr(name, png(drawing(seed, code, d)))
    return path


def write_splits(root: Path, files: dict = SPLIT_FILES) -> None:
    folder = root / "omniglot" / "splits" / "vinyals"
    folder.mkdir(parents=True, exist_ok=True)
    for split, spec in files.items():
        named = {
            s: {a: [f"character{n:02d}" for n in numbers] for a, numbers in alphabets.items()}
            for s, alphabets in spec.items()
        }
        (folder / f"{split}.json").write_text(json.dumps(named))


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data root holding a tiny Omniglot: ``omniglot/images_*.zip`` and the split files."""
    data = tmp_path_factory.mktemp("tiny") / "data"
    for zip_set in og.SETS:
        write_zip(data, zip_set)
    write_splits(data)
    return data


@pytest.fixture
def root(pristine: Path, tmp_path: Path) -> Path:
    """A copy of the tiny Omniglot that the test may damage."""
    return Path(shutil.copytree(pristine, tmp_path / "data"))


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def shared(pristine: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache holding the decoded tiny Omniglot, for tests that change neither."""
    cache = tmp_path_factory.mktemp("tiny-cache")
    load(pristine, cache)
    return cache


def load(root: Path, cache: Path, **options) -> ClassDataset:
    return og.omniglot(og.OmniglotOptions(**options), root, cache)


def cache_files(cache: Path) -> list[Path]:
    return sorted(cache.glob("*")) if cache.exists() else []


def no_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any decoding of PNGs fail loudly."""

    def refuse(*args, **kwargs):
        raise AssertionError("decoded PNGs")

    monkeypatch.setattr(og, "_decode", refuse)
    monkeypatch.setattr(Image, "open", refuse)


# --- the pool and its cache ---------------------------------------------------------------


def test_pool_is_greyscale_lanczos_inverted(root: Path, cache: Path) -> None:
    ds = load(root, cache)
    images = ds.pool.images
    assert images.shape == (N_CHARS * 20, 1, 28, 28) and images.dtype == torch.uint8
    assert ds.input_shape == (1, 28, 28)
    assert ds.pool.counts.tolist() == [20] * N_CHARS
    assert ds.pool.offsets.tolist() == list(range(0, N_CHARS * 20, 20))
    assert ds.pool.names[0] == char_name("background", "Alpha", 1)
    assert ds.pool.names[9] == char_name("evaluation", "Delta", 1)  # evaluation after background
    # Greyscale before the resize: anti-aliased grey edges, not a binary image.
    grey = ((images > 0) & (images < 255)).float().mean()
    assert grey > 0.05
    # Inverted: background dark (most pixels 0), strokes bright.
    assert (images == 0).float().mean() > 0.5
    assert images.max() > 200
    # Each row is its own drawing, in order: compare with the reference pipeline.
    for char, d, code in ((0, 0, 101), (4, 19, 105), (13, 7, 505)):
        ref = drawing(0, code, d + 1).convert("L").resize((28, 28), Image.Resampling.LANCZOS)
        expected = 255 - torch.from_numpy(np.array(ref, dtype=np.uint8))
        assert torch.equal(images[char * 20 + d, 0], expected)
    binary = drawing(0, 101, 1).resize((28, 28), Image.Resampling.LANCZOS)  # the wrong way
    assert not torch.equal(
        images[0, 0], 255 - torch.from_numpy(np.array(binary.convert("L"), dtype=np.uint8))
    )


def test_image_size_option(root: Path, cache: Path) -> None:
    ds = load(root, cache, image_size=20)
    assert ds.pool.images.shape == (N_CHARS * 20, 1, 20, 20)
    assert [p.name.split("-")[0] for p in cache_files(cache)] == ["omniglot20"]
    with pytest.raises(CmlearnError, match="image_size"):
        DATASETS.make_options("omniglot", {"image_size": 4})


def test_cache_is_written_once(root: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = load(root, cache)
    key = source_key(og.zip_paths(root), "omniglot", 28)
    assert [p.name for p in cache_files(cache)] == [f"omniglot28-{key}.pt"]
    no_decoding(monkeypatch)
    os.utime(og.zip_paths(root)[0], (0, 0))  # a new mtime is not a new source
    again = load(root, cache)
    assert torch.equal(again.pool.images, first.pool.images)
    assert again.pool.names == first.pool.names
    assert len(cache_files(cache)) == 1


def test_cache_is_keyed_by_the_zips_content(root: Path, cache: Path) -> None:
    first = load(root, cache)
    write_zip(root, "evaluation", seed=1)  # other drawings, same names
    second = load(root, cache)
    assert len(cache_files(cache)) == 2
    assert second.pool.names == first.pool.names
    assert torch.equal(second.pool.images[:180], first.pool.images[:180])  # background
    assert not torch.equal(second.pool.images[180:], first.pool.images[180:])


class Crash(Exception):
    """Stands for the process dying half-way through writing the cache."""


def test_half_written_cache_is_never_read(
    root: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = source_key(og.zip_paths(root), "omniglot", 28)
    final = cache / f"omniglot28-{key}.pt"
    # A temporary file left by an earlier crash beside the cache's name: never read.
    cache.mkdir()
    stale = cache / f".{final.name}.abc123.tmp"
    stale.write_bytes(b"PK\x03\x04 half a file")
    real_save = torch.save

    def dying_save(obj, f, *args, **kwargs):
        f.write(b"half a torch file")
        raise Crash

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(Crash):
        load(root, cache)
    assert cache_files(cache) == [stale]  # the interrupted write left nothing behind
    monkeypatch.setattr(torch, "save", real_save)
    ds = load(root, cache)  # decodes again, never reading the stale temporary file
    assert final.exists() and ds.pool.images.shape[0] == N_CHARS * 20
    assert torch.equal(load(root, cache).pool.images, ds.pool.images)


def test_damaged_cache_is_a_one_line_error(root: Path, cache: Path) -> None:
    load(root, cache)
    (path,) = cache_files(cache)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CmlearnError, match="unreadable.*delete it") as err:
        load(root, cache)
    assert "\n" not in str(err.value)


def test_overwritten_bytes_in_a_cache_are_caught(root: Path, cache: Path) -> None:
    from tests.test_faults import _overwrite_inside

    load(root, cache)
    (path,) = cache_files(cache)
    _overwrite_inside(path)  # torch.load alone would return the changed images
    with pytest.raises(CmlearnError, match="fails its CRC-32 check.*delete it"):
        load(root, cache)


def test_cache_of_other_sources_is_refused(root: Path, cache: Path) -> None:
    load(root, cache)
    (path,) = cache_files(cache)
    blob = torch.load(path, weights_only=True)
    torch.save({**blob, "key": "0" * 20}, path)
    with pytest.raises(CmlearnError, match="other source files"):
        load(root, cache)


# --- splits -------------------------------------------------------------------------------


def names_of(ds: ClassDataset, split: str) -> list[str]:
    return [ds.pool.names[i] for i in ds.splits[split].classes.tolist()]


def test_vinyals_split_rotations_as_classes(pristine: Path, shared: Path) -> None:
    ds = load(pristine, shared)  # the data root's split files, not the packaged ones
    assert {s: len(ds.splits[s]) for s in ds.splits} == {"train": 24, "val": 16, "test": 16}
    for split in ("train", "val", "test"):
        names = names_of(ds, split)
        assert set(names) == split_names(split)
        assert all(names[i] == names[i - i % 4] for i in range(len(names)))  # ×4 in a row
        assert ds.splits[split].rotations.tolist() == [0, 1, 2, 3] * (len(names) // 4)
    ds = load(pristine, shared, rotate_test=False)
    assert len(ds.splits["train"]) == 24 and len(ds.splits["val"]) == 16
    assert len(ds.splits["test"]) == 4 and set(ds.splits["test"].rotations.tolist()) == {0}
    assert set(names_of(ds, "test")) == split_names("test")
    ds = load(pristine, shared, rotation="task")
    assert [len(ds.splits[s]) for s in ("train", "val", "test")] == [6, 4, 4]
    assert all(set(ds.splits[s].rotations.tolist()) == {-1} for s in ds.splits)


def test_lake_split(pristine: Path, shared: Path) -> None:
    ds = load(pristine, shared, split="lake")
    background = {n for n in ds.pool.names if n.startswith("images_background/")}
    assert set(names_of(ds, "val")) == split_names("val")
    assert set(names_of(ds, "train")) == background - split_names("val")
    assert len(names_of(ds, "train")) == 5
    assert names_of(ds, "test") == [n for n in ds.pool.names if n.startswith("images_evaluation")]
    assert all(set(s.rotations.tolist()) == {0} for s in ds.splits.values())


def test_finn_split(pristine: Path, shared: Path) -> None:
    ds = load(pristine, shared, split="finn")
    sizes = {s: len(ds.splits[s]) for s in ("train", "val", "test")}
    assert sizes == {"train": 9, "val": 1, "test": 4}  # 1100 / 100 / 423 in proportion
    ids = [i for s in ("train", "val", "test") for i in ds.splits[s].classes.tolist()]
    assert sorted(ids) == list(range(N_CHARS))
    assert all(set(s.rotations.tolist()) == {-1} for s in ds.splits.values())  # every split
    again = load(pristine, shared, split="finn", rotate_test=False)
    assert all(torch.equal(again.splits[s].classes, ds.splits[s].classes) for s in ds.splits)
    assert set(again.splits["test"].rotations.tolist()) == {0}
    assert set(again.splits["train"].rotations.tolist()) == {-1}
    assert og.finn_sizes(1623) == (1100, 100)


def test_split_files_fall_back_to_the_packaged_copy(root: Path, cache: Path) -> None:
    shutil.rmtree(root / "omniglot" / "splits")
    with pytest.raises(CmlearnError, match="omniglot_vinyals.*unknown character"):
        load(root, cache)


# --- bad input: one-line errors, and exit status 2 from the CLI -----------------------------


def remove_zip(root: Path, cache: Path) -> None:
    (root / "omniglot" / "images_evaluation.zip").unlink()


def random_zip(root: Path, cache: Path) -> None:
    rng = np.random.default_rng(0)
    (root / "omniglot" / "images_background.zip").write_bytes(rng.bytes(50_000))


def truncate_zip(root: Path, cache: Path) -> None:
    path = root / "omniglot" / "images_background.zip"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def rewrite_zip(
    path: Path, change: Callable[[str, bytes], bytes | None], compression: int = zipfile.ZIP_STORED
) -> None:
    """Rewrite the zip at ``path`` with each member's data passed through ``change`` (None
    drops the member)."""
    with zipfile.ZipFile(path) as archive:
        members = {n: archive.read(n) for n in archive.namelist()}
    with zipfile.ZipFile(path, "w", compression) as archive:
        for name, data in members.items():
            new = change(name, data)
            if new is not None:
                archive.writestr(name, new)


LAST = "Epsilon/character02/0505_20.png"


def bad_png(root: Path, cache: Path) -> None:
    path = root / "omniglot" / "images_evaluation.zip"
    rewrite_zip(path, lambda name, data: b"not a png" if name.endswith(LAST) else data)


def flip_member_bytes(root: Path, cache: Path) -> None:
    path = root / "omniglot" / "images_background.zip"
    data = bytearray(path.read_bytes())
    data[200:260] = bytes(60)  # inside the first PNG's data: the CRC no longer matches
    path.write_bytes(bytes(data))


def damaged_deflate(root: Path, cache: Path) -> None:
    """A re-zipped (deflated) copy whose first member's stream starts with a reserved block."""
    path = root / "omniglot" / "images_background.zip"
    rewrite_zip(path, lambda name, data: data, zipfile.ZIP_DEFLATED)
    data = bytearray(path.read_bytes())
    name_len, extra_len = (int.from_bytes(data[i : i + 2], "little") for i in (26, 28))
    data[30 + name_len + extra_len] = 0xFF  # BTYPE 11: zlib.error "invalid block type"
    path.write_bytes(bytes(data))


def missing_drawing(root: Path, cache: Path) -> None:
    path = root / "omniglot" / "images_evaluation.zip"
    rewrite_zip(path, lambda name, data: None if name.endswith(LAST) else data)


def unknown_character(root: Path, cache: Path) -> None:
    write_splits(root, {**SPLIT_FILES, "val": {"background": {"Beta": [1, 9]}}})


def character_in_two_splits(root: Path, cache: Path) -> None:
    test = {"evaluation": {"Delta": [1, 2, 3], "Epsilon": [1, 2]}}
    write_splits(root, {**SPLIT_FILES, "test": test})


def other_cache_format(root: Path, cache: Path) -> None:
    key = source_key(og.zip_paths(root), "omniglot", 28)
    cache.mkdir(parents=True, exist_ok=True)
    blob = {"format": CACHE_FORMAT + 1, "key": key, "payload": {"pool": torch.zeros(1)}}
    torch.save(blob, cache / f"omniglot28-{key}.pt")


def nothing(root: Path, cache: Path) -> None:
    pass


URL = "https://github.com/brendenlake/omniglot/raw/master/python/images_evaluation.zip"
BAD: dict[str, tuple[Callable[[Path, Path], None], list[str], str]] = {
    "missing zip": (remove_zip, [], "Omniglot not found: expected .*images_evaluation.zip"),
    "random bytes": (random_zip, [], "images_background.zip is corrupt or truncated"),
    "truncated": (truncate_zip, [], "images_background.zip is corrupt or truncated"),
    "bad png": (bad_png, [], "images_evaluation.zip is corrupt or truncated"),
    "bad member crc": (flip_member_bytes, [], "images_background.zip is corrupt or truncated"),
    "damaged deflate": (damaged_deflate, [], "images_background.zip is corrupt .*block type"),
    "19 drawings": (missing_drawing, [], "character02 has 19 drawings, expected 20"),
    "unknown character": (unknown_character, [], "val.json names 1 unknown .*Beta/character09"),
    "in two splits": (character_in_two_splits, [], "Delta/character01 in train and test"),
    "ways": (nothing, ["task.ways=17"], "17-way tasks need 17 classes but the val split has 16"),
    "shots+queries": (
        nothing,
        ["task.shots=5", "task.queries=16"],
        "5 shots \\+ 16 queries = 21 examples per class, but a train class has only 20",
    ),
    "eval queries": (
        nothing,
        ["task.eval_queries=20"],
        "1 shots \\+ 20 queries = 21 examples per class, but a val class has only 20",
    ),
    "val queries": (
        nothing,
        ["task.val_queries=20"],
        "1 shots \\+ 20 queries = 21 examples per class, but a val class has only 20",
    ),
    "test queries": (  # validation asks for fewer: the test split is the one that cannot fill
        nothing,
        ["task.eval_queries=20", "task.val_queries=5"],
        "1 shots \\+ 20 queries = 21 examples per class, but a test class has only 20",
    ),
    "cache format": (other_cache_format, [], f"another cmlearn version .*reads {CACHE_FORMAT}"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_a_one_line_error(root: Path, cache: Path, case: str) -> None:
    from cmlearn.app.build import build_source
    from cmlearn.app.config import get_preset
    from cmlearn.app.runtime import Runtime

    prepare, sets, message = BAD[case]
    prepare(root, cache)
    cfg = get_preset(PRESET).override(sets)
    with pytest.raises(CmlearnError, match=message) as err:
        build_source(cfg, Runtime(root, cache, torch.device("cpu")))
    assert "\n" not in str(err.value)
    if case == "missing zip":
        assert URL in str(err.value) and str(root / "omniglot") in str(err.value)


CLI_CASES = [
    "missing zip",
    "truncated",
    "unknown character",
    "ways",
    "eval queries",
    "cache format",
]


@pytest.mark.parametrize("case", CLI_CASES)
def test_bad_input_exits_2_from_the_cli(
    root: Path,
    cache: Path,
    case: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    prepare, sets, message = BAD[case]
    prepare(root, cache)
    monkeypatch.setenv("CMLEARN_CACHE", str(cache))
    args = ["train", "--preset", PRESET, "--data-root", str(root), "--device", "cpu"]
    args += ["--out", str(tmp_path / "run"), "--quiet"]
    for item in sets:
        args += ["--set", item]
    assert main(args) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("cmlearn: error: ")
    assert re.search(message, err)
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


# --- the sampler --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def found(pristine: Path, shared: Path) -> dict[bytes, tuple[int, int, int]]:
    """Every pooled image under each quarter turn → (character, drawing, turns)."""
    found = {}
    images = load(pristine, shared).pool.images
    for row in range(images.shape[0]):
        for turns in range(4):
            key = torch.rot90(images[row], turns, dims=(-2, -1)).numpy().tobytes()
            found[key] = (row // 20, row % 20, turns)
    assert len(found) == 4 * images.shape[0]  # no image equals another, rotated or not
    return found


def identify(
    batch: TaskBatch, ways: int, shots: int, found: dict
) -> list[list[list[tuple[int, int, int]]]]:
    """(character, drawing, turns) of every example, as ``[task][class][example]``."""
    out = []
    for t in range(batch.n_tasks):
        xs = torch.cat(
            [
                batch.support_x[t].unflatten(0, (ways, shots)),
                batch.query_x[t].unflatten(0, (ways, -1)),
            ],
            dim=1,
        )
        pixels = np.rint(xs.numpy() * 255).astype(np.uint8)
        out.append([[found[x.tobytes()] for x in cls] for cls in pixels])
    return out


def test_sampling_is_seeded(pristine: Path, shared: Path) -> None:
    source = ClassificationSource(load(pristine, shared), 5, 2, 3, 4)
    a = source.sample(4, generator("train", 0, 7))
    b = source.sample(4, generator("train", 0, 7))
    c = source.sample(4, generator("train", 0, 8))
    assert all(torch.equal(getattr(a, f), getattr(b, f)) for f in ("support_x", "query_x"))
    assert not torch.equal(a.support_x, c.support_x)


@pytest.mark.parametrize(
    ("split", "rotation"),
    [("train", "default"), ("val", "task"), ("test", "none"), ("val", "default")],
)
def test_task_structure(
    pristine: Path, shared: Path, found: dict, split: str, rotation: str
) -> None:
    ds = load(pristine, shared, rotation=rotation)
    ways, shots, queries, eval_queries = 4, 3, 2, 5
    val_queries = 0 if rotation == "default" else 4  # 0: validation tasks are test-sized
    source = ClassificationSource(ds, ways, shots, queries, eval_queries, val_queries=val_queries)
    q = {"train": queries, "val": val_queries or eval_queries, "test": eval_queries}[split]
    batch = source.sample(16, generator("train", 1, 0), split)
    assert batch.support_x.shape == (16, ways * shots, 1, 28, 28)
    assert batch.query_x.shape == (16, ways * q, 1, 28, 28)
    assert batch.support_x.dtype == torch.float32
    for x in (batch.support_x, batch.query_x):
        assert x.min() >= 0 and x.max() <= 1
    labels = torch.arange(ways)
    assert torch.equal(batch.support_y, labels.repeat_interleave(shots).expand(16, -1))
    assert torch.equal(batch.query_y, labels.repeat_interleave(q).expand(16, -1))
    allowed = {
        (int(c), int(r) if r >= 0 else None)
        for c, r in zip(ds.splits[split].classes, ds.splits[split].rotations, strict=True)
    }
    turns_seen, mixed = set(), False
    for task in identify(batch, ways, shots, found):
        classes = set()
        for cls in task:
            chars, drawings, turns = zip(*cls, strict=True)
            assert len(set(chars)) == 1  # one character per class
            assert len(set(drawings)) == shots + q  # distinct drawings
            assert len(set(turns)) == 1  # one quarter turn for the whole class
            fixed = (chars[0], turns[0]) in allowed
            assert fixed or (chars[0], None) in allowed  # a split class, its rotation
            classes.add((chars[0], turns[0]))
            turns_seen.add(turns[0])
        assert len(classes) == ways  # distinct classes
        mixed |= len({turns for _, turns in classes}) > 1
    expected = {"default": {0, 1, 2, 3}, "task": {0, 1, 2, 3}, "none": {0}}[rotation]
    assert turns_seen == expected
    assert mixed == (rotation != "none")  # "task": a quarter turn per class, not per task


def test_class_rotation_is_fixed_per_class(pristine: Path, shared: Path, found: dict) -> None:
    ds = load(pristine, shared)
    chars = torch.arange(N_CHARS)
    split = ClassSplit(chars, chars % 4)  # character c turned c % 4 times, always
    custom = ClassDataset("omniglot", ds.pool, {s: split for s in ("train", "val", "test")})
    source = ClassificationSource(custom, 6, 1, 2, 2)
    batch = source.sample(10, generator("train", 2, 0))
    seen = set()
    for task in identify(batch, 6, 1, found):
        for cls in task:
            char, _, turns = cls[0]
            assert all(turns == c[2] == char % 4 for c in cls)
            seen.add(char)
    assert len(seen) == N_CHARS


def test_sampling_is_pure_tensor_indexing(
    pristine: Path, shared: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sources = [
        ClassificationSource(load(pristine, shared, rotation=rotation), 4, 1, 5, 15)
        for rotation in ("classes", "task")
    ]
    no_decoding(monkeypatch)
    for source in sources:
        for split in ("train", "val", "test"):
            batch = source.sample(8, generator("train", 0, 0), split)
            assert batch.n_tasks == 8


# --- the real Omniglot --------------------------------------------------------------------


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The real data root and a cache holding its decoded pool (decoded once, ~10 s)."""
    if not all(p.is_file() for p in og.zip_paths(REAL)):
        pytest.skip(f"no Omniglot zips in {REAL / 'omniglot'}")
    cache = tmp_path_factory.mktemp("omniglot-cache")
    og.read_pool(REAL, cache)
    return REAL, cache


def test_real_omniglot_pool(real: tuple[Path, Path]) -> None:
    pool = og.read_pool(*real)
    assert pool.images.shape == (32460, 1, 28, 28) and pool.images.dtype == torch.uint8
    assert len(pool.names) == len(set(pool.names)) == 1623
    assert sum(n.startswith("images_background/") for n in pool.names) == 964
    assert pool.images.float().mean() < 0.2 * 255  # bright strokes on a dark background


def test_real_omniglot_splits(real: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    no_decoding(monkeypatch)

    def sizes(**options) -> list[int]:
        ds = load(*real, **options)
        return [len(ds.splits[s]) for s in ("train", "val", "test")]

    assert sizes() == [4112, 688, 1692]
    assert sizes(rotate_test=False) == [4112, 688, 423]
    assert sizes(split="finn") == [1100, 100, 423]
    assert sizes(split="lake") == [964 - 172, 172, 659]
    finn = load(*real, split="finn")
    assert all(set(s.rotations.tolist()) == {-1} for s in finn.splits.values())
    ids = [i for s in finn.splits.values() for i in s.classes.tolist()]
    assert sorted(ids) == list(range(1623))
    vinyals = load(*real)
    ids = [i for s in vinyals.splits.values() for i in s.classes.unique().tolist()]
    assert sorted(ids) == list(range(1623))  # 1028 + 172 + 423, disjoint


def test_real_omniglot_packaged_splits_and_sampling(
    real: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bare = tmp_path / "data"
    (bare / "omniglot").mkdir(parents=True)
    for path in og.zip_paths(real[0]):  # the same zips, no split files beside them
        (bare / "omniglot" / path.name).symlink_to(path)
    no_decoding(monkeypatch)  # the cache is keyed by content, not path
    packaged, shipped = load(bare, real[1]), load(*real)
    for split in ("train", "val", "test"):
        assert torch.equal(packaged.splits[split].classes, shipped.splits[split].classes)
    batch = ClassificationSource(shipped, 5, 1, 15, 15).sample(8, generator("train", 0, 0))
    assert batch.support_x.shape == (8, 5, 1, 28, 28) and batch.query_x.shape[1] == 75
    assert 0 <= batch.query_x.min() and batch.query_x.max() <= 1


# --- the catalog: one table of every dataset a preset reads (issue 21, §4) -----------------


def test_the_catalog_lists_every_dataset_read_from_disk_graphs_included():
    from cmlearn.app.data.catalog import catalog_entries
    from cmlearn.core.tasks import SinusoidFamily  # noqa: F401  (registers the synthetic family)

    # the synthetic family, and users' parts named by import path (registered on first use)
    synthetic = {"sinusoid"} | {name for name in DATASETS.entries if ":" in name}
    entries = catalog_entries()
    assert set(entries) == set(DATASETS.entries) - synthetic
    assert entries["citeseer"].unit == "nodes" and entries["citeseer"].domain == "graphs"
    assert all(DATASETS.entries[name].catalog is entry for name, entry in entries.items())
    # listed in the order the readers register (cmlearn.app.data imports them in this order)
    images = ["omniglot", "miniimagenet", "tieredimagenet", "cifarfs", "fc100", "flower", "cub"]
    assert list(entries) == images + list(graphs.GRAPHS)


def test_a_dataset_registered_with_a_catalog_entry_is_listed(tmp_path: Path, capsys) -> None:
    """One registry: ``DATASETS.register(..., catalog=entry)`` is all it takes to be listed,
    checked for and fetched by ``cmlearn data``; catalog.py names no dataset."""
    from cmlearn.app.data.about import Entry

    def locate(root: Path) -> Path:
        path = Path(root) / "toy" / "toy.bin"
        if not path.is_file():
            raise CmlearnError(f"toy file not found: expected {path}")
        return path

    about = Entry("toy", "A toy dataset", "toy", locate, (3, 1, 1), manual="make toy/toy.bin")
    argv = ["data", "list", "--data-root", str(tmp_path)]

    def listed() -> list[str]:
        assert main(argv) == 0
        return capsys.readouterr().out.splitlines()

    DATASETS.register("toy", help="a toy", catalog=about)(lambda options, root, cache: None)
    try:
        lines = listed()
        row = next(i for i, line in enumerate(lines) if line.split()[:1] == ["toy"])
        assert lines[row].split()[1:4] == ["absent", "-", "manual"]
        assert lines.index("images") < row < lines.index("graphs")  # under its domain
        (tmp_path / "toy").mkdir()
        (tmp_path / "toy" / "toy.bin").write_bytes(b"")
        assert any(line.split()[:2] == ["toy", "ok"] for line in listed())
        assert main(["data", "fetch", "toy", "--data-root", str(tmp_path)]) == 2
        assert "toy cannot be downloaded automatically: make toy/toy.bin" in capsys.readouterr().err
    finally:
        del DATASETS.entries["toy"]
    assert not any(line.split()[:1] == ["toy"] for line in listed())


def test_data_list_has_headers_and_the_graphs(root: Path, capsys) -> None:
    assert main(["data", "list", "--data-root", str(root)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "graphs" in lines and "images" in lines
    assert sum(line.split()[:2] == ["dataset", "state"] for line in lines) == 2
    assert any(line.split()[:2] == ["citeseer", "absent"] for line in lines)


def test_a_repacked_archive_with_the_right_contents_warns_and_passes(
    root: Path, cache: Path, recatalog, capsys
) -> None:
    data = load(root, cache)  # the tiny Omniglot: its zips' MD5s are not the published ones
    counts = tuple(
        int(data.pool.counts[data.splits[s].classes].sum()) for s in ("train", "val", "test")
    )
    classes = tuple(len(data.splits[s].classes) for s in ("train", "val", "test"))
    recatalog("omniglot", classes=classes, images=counts)
    argv = ["data", "check", "omniglot", "--data-root", str(root)]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "warning: omniglot/images_background.zip has MD5" in err
    assert "taken as a repacked archive" in err
    recatalog("omniglot", images=(counts[0] + 1, *counts[1:]))
    assert main(argv) == 2  # a count that differs is still an error
    assert "images, expected" in capsys.readouterr().err
