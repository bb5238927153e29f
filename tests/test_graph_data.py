"""The graph data layer: Planetoid and npz readers, Â, class splits, the node-task sampler.

Tiny graphs are written in the real formats (Planetoid pickles of scipy/numpy objects and a
dict of neighbour lists; gnn-benchmark CSR npz) from a known ground truth; one module-scoped
fixture reads the real files (``$CMLEARN_DATA``, else the data folder CI provides beside the
checkout; skipped where absent).
"""

from __future__ import annotations

import os
import pickle
import re
import shutil
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from cmlearn import CmlearnError
from cmlearn.app.build import build_source
from cmlearn.app.cli import main
from cmlearn.app.config import Config
from cmlearn.app.data import NodeDataset
from cmlearn.app.data import graphs as gr
from cmlearn.app.runtime import Runtime
from cmlearn.core.registry import DATASETS
from cmlearn.core.tasks import NodeTaskSource, generator

REAL = Path(
    os.environ.get("CMLEARN_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data"
)


pytestmark = pytest.mark.usefixtures("one_thread")


# --- tiny graphs in the real formats, and their ground truth --------------------------------


class Truth:
    """A graph of ``n`` nodes: dense features, labels and a directed edge list (with a
    duplicate, a self-loop and one-way edges, which the readers must clean)."""

    def __init__(self, n: int, classes: int, features: int = 9, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.x = rng.integers(0, 4, (n, features)).astype(np.float32)  # counts 0..3
        self.x[rng.random((n, features)) < 0.5] = 0
        self.y = np.arange(n) % classes
        rng.shuffle(self.y)
        ring = [(v, (v + 1) % (n - 2)) for v in range(n - 2)]  # the last two nodes: isolated
        self.edges = ring + [(0, 5), (0, 5), (3, 3), (n - 1, n - 1)]

    def adjacency(self) -> np.ndarray:
        """Dense Â = D̃⁻¹(A + I) of the undirected graph (the oracle)."""
        n = len(self.y)
        a = np.zeros((n, n))
        for u, v in self.edges:
            if u != v:
                a[u, v] = a[v, u] = 1
        a += np.eye(n)
        return a / a.sum(1, keepdims=True)


def planetoid_truth(classes: int = 6) -> tuple[Truth, np.ndarray, int]:
    """Ground truth of a Planetoid graph: nodes ``0..known-1`` in ``allx``; the test ids in
    the file's (shuffled) order; node ``known + 4`` missing from ``tx`` (as CiteSeer's
    missing test ids): its features are zero and its label 0."""
    n, known = 14 * classes, 5 * classes
    truth = Truth(n, classes)
    test = np.random.default_rng(1).permutation(np.arange(known, n))
    test = test[test != known + 4]
    truth.x[known + 4] = 0
    truth.y[known + 4] = 0
    truth.edges = [e for e in truth.edges if known + 4 not in e]
    return truth, test, known


def write_planetoid(root: Path, prefix: str, classes: int = 6) -> Truth:
    truth, test, known = planetoid_truth(classes)
    onehot = np.eye(classes, dtype=np.int32)[truth.y]
    graph: defaultdict[int, list[int]] = defaultdict(list)
    for u, v in truth.edges:
        graph[u].append(v)
    parts = {
        "x": sp.csr_matrix(truth.x[:classes]),
        "y": onehot[:classes],
        "allx": sp.csr_matrix(truth.x[:known]),
        "ally": onehot[:known],
        "tx": sp.csr_matrix(truth.x[test]),
        "ty": onehot[test],
        "graph": graph,
    }
    folder = root / "planetoid"
    folder.mkdir(parents=True, exist_ok=True)
    for part, value in parts.items():
        (folder / f"ind.{prefix}.{part}").write_bytes(pickle.dumps(value, protocol=2))
    (folder / f"ind.{prefix}.test.index").write_text("".join(f"{i}\n" for i in test))
    return truth


def write_npz(root: Path, file: str, classes: int, dense_attributes: bool = False) -> Truth:
    truth = Truth(12 * classes, classes, seed=2)
    n = len(truth.y)
    edges = sorted(truth.edges)  # CSR by hand: the duplicate edge stays stored twice
    adj = {
        "adj_data": np.full(len(edges), 2.0, np.float32),  # values are ignored: the pattern is A
        "adj_indices": np.array([v for _, v in edges], np.int32),
        "adj_indptr": np.searchsorted([u for u, _ in edges], np.arange(n + 1)).astype(np.int32),
        "adj_shape": np.array([n, n]),
    }
    attrs = {"attr_matrix": truth.x} if dense_attributes else csr_arrays("attr", truth.x)
    path = root / "npz" / file
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(
        path,
        **adj,
        **attrs,
        labels=truth.y.astype(np.int64),
        class_names=np.array([f"class {c}" for c in range(classes)]),
    )
    return truth


def csr_arrays(prefix: str, matrix) -> dict[str, np.ndarray]:
    m = sp.csr_matrix(matrix)
    return {
        f"{prefix}_data": m.data.astype(np.float32),
        f"{prefix}_indices": m.indices,
        f"{prefix}_indptr": m.indptr,
        f"{prefix}_shape": np.array(m.shape),
    }


NPZ = {"amazon-computer": 10, "coauthor-cs": 15, "amazon-photo": 8, "corafull": 70}


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Truth]]:
    """A data root with tiny Cora (7 classes), CiteSeer (6) and every npz graph."""
    root = tmp_path_factory.mktemp("graphs") / "data"
    truths = {
        "citeseer": write_planetoid(root, "citeseer", 6),
        "cora": write_planetoid(root, "cora", 7),
    }
    for name, classes in NPZ.items():
        truths[name] = write_npz(root, gr.GRAPHS[name].file, classes, name == "coauthor-cs")
    return root, truths


@pytest.fixture
def root(pristine: tuple[Path, dict], tmp_path: Path) -> Path:
    """A copy of the tiny data root that the test may damage."""
    return Path(shutil.copytree(pristine[0], tmp_path / "data"))


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def load(root: Path, cache: Path, name: str, **options) -> NodeDataset:
    return DATASETS.get(name).build(DATASETS.make_options(name, options), root, cache)


# --- readers and Â ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["citeseer", "cora", *NPZ])
def test_reader_matches_the_ground_truth(
    pristine: tuple[Path, dict], cache: Path, name: str
) -> None:
    root, truths = pristine
    truth = truths[name]
    graph = gr.read_graph(name, root, cache, binary=False)
    assert graph.features.layout == torch.sparse_coo and graph.features.dtype == torch.float32
    assert np.array_equal(graph.features.to_dense().numpy(), truth.x)  # raw: counts kept
    assert graph.labels.dtype == torch.int64
    assert np.array_equal(graph.labels.numpy(), truth.y)
    assert graph.adjacency.layout == torch.sparse_coo and graph.adjacency.dtype == torch.float32
    assert np.allclose(graph.adjacency.to_dense().numpy(), truth.adjacency(), atol=1e-7)
    assert graph.n_edges == int((truth.adjacency() > 0).sum()) - graph.n_nodes
    binary = gr.read_graph(name, root, cache)  # the default: npz attributes > 0 become 1 (PyG)
    expected = (truth.x > 0).astype(np.float32) if name in NPZ else truth.x
    assert np.array_equal(binary.features.to_dense().numpy(), expected)


def test_adjacency_is_sparse_and_row_stochastic(pristine: tuple[Path, dict], cache: Path) -> None:
    graph = gr.read_graph("citeseer", pristine[0], cache)
    a = graph.adjacency
    assert a.is_coalesced() and a._nnz() == graph.n_edges + graph.n_nodes  # no dense N×N
    rows = torch.zeros(graph.n_nodes, dtype=torch.float64).index_add_(
        0, a.indices()[0], a.values().double()
    )
    assert torch.allclose(rows, torch.ones_like(rows), atol=1e-6)
    assert torch.equal(a.indices(), a.t().coalesce().indices())  # symmetric pattern
    # Isolated nodes (the missing test id, here edgeless; one with only a self-loop): Â[v, v] = 1.
    _, _, known = planetoid_truth()
    for v in (known + 4, graph.n_nodes - 1):
        assert a.to_dense()[v].tolist() == [float(u == v) for u in range(graph.n_nodes)]


def test_cache_is_written_once_and_keyed_by_content(
    root: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = gr.read_graph("amazon-computer", root, cache)
    assert [p.name.split("-")[:3] for p in cache.iterdir()] == [["graph", "amazon", "computer"]]

    def refuse(paths):
        raise AssertionError("read the files again")

    monkeypatch.setattr(gr, "read_npz", refuse)
    again = gr.read_graph("amazon-computer", root, cache)
    raw = gr.read_graph("amazon-computer", root, cache, binary=False)  # one cache for both
    assert torch.equal(again.features.to_dense(), first.features.to_dense())
    assert torch.equal(raw.labels, first.labels) and len(list(cache.iterdir())) == 1
    monkeypatch.undo()
    write_npz(root, gr.GRAPHS["amazon-computer"].file, 5)  # other content, same name
    assert gr.read_graph("amazon-computer", root, cache).n_classes == 5
    assert len(list(cache.iterdir())) == 2


# --- class splits -------------------------------------------------------------------------

# TLP-FSNC's first-draw splits (NumPy RandomState(1234), as its training scripts seed it);
# val and test in draw order.
TLP_SPLITS = {
    (6, (2, 2, 2)): ([3, 5], [0, 4], [2, 1]),
    (7, (3, 2, 2)): ([3, 5, 6], [4, 0], [2, 1]),
    (10, (4, 3, 3)): ([1, 3, 4, 6], [8, 5, 0], [7, 2, 9]),
    (15, (5, 5, 5)): ([1, 5, 6, 7, 9], [4, 10, 3, 2, 8], [13, 11, 0, 12, 14]),
    (70, (40, 15, 15)): (
        None,
        [30, 2, 53, 9, 16, 56, 11, 14, 40, 32, 54, 21, 26, 64, 15],
        [46, 57, 33, 36, 6, 25, 63, 66, 8, 20, 29, 4, 22, 18, 50],
    ),
    (40, (20, 10, 10)): (  # ogbn-arxiv: not read here, but the same draw
        [0, 6, 7, 10, 12, 15, 16, 18, 19, 22, 23, 25, 26, 27, 28, 29, 32, 33, 37, 38],
        [5, 24, 2, 3, 9, 36, 34, 35, 11, 30],
        [8, 39, 14, 1, 4, 31, 20, 17, 13, 21],
    ),
}


@pytest.mark.parametrize("case", list(TLP_SPLITS))
def test_class_split_replays_tlp(case: tuple[int, tuple[int, int, int]]) -> None:
    n, sizes = case
    split = gr.class_split(n, sizes)
    train, val, test = TLP_SPLITS[case]
    assert split["val"].tolist() == val and split["test"].tolist() == test
    if train is not None:
        assert split["train"].tolist() == train
    ids = torch.cat([split[s] for s in ("train", "val", "test")])
    assert sorted(ids.tolist()) == list(range(n))
    assert [len(split[s]) for s in ("train", "val", "test")] == list(sizes)


@pytest.mark.parametrize(
    ("name", "sizes"),
    [
        ("citeseer", [2, 2, 2]),  # not the CML paper's "20/10/10" (a typo: 6 classes)
        ("cora", [3, 2, 2]),
        ("amazon-computer", [4, 3, 3]),
        ("coauthor-cs", [5, 5, 5]),
        ("corafull", [40, 15, 15]),
    ],
)
def test_standard_splits(pristine: tuple[Path, dict], cache: Path, name: str, sizes) -> None:
    ds = load(pristine[0], cache, name)
    assert [len(ds.splits[s]) for s in ("train", "val", "test")] == sizes
    assert same(ds.splits, gr.class_split(sum(sizes), tuple(sizes)))
    # Members: every node once, grouped by class.
    labels = ds.graph.labels
    assert sorted(ds.members.tolist()) == list(range(ds.graph.n_nodes))
    for c in range(ds.graph.n_classes):
        nodes = ds.members[ds.offsets[c] : ds.offsets[c] + ds.counts[c]]
        assert (labels[nodes] == c).all() and len(nodes) == (labels == c).sum()


def test_split_options(pristine: tuple[Path, dict], cache: Path) -> None:
    root = pristine[0]
    photo = load(root, cache, "amazon-photo", classes=(4, 2, 2))
    assert [len(photo.splits[s]) for s in ("train", "val", "test")] == [4, 2, 2]
    other = load(root, cache, "citeseer", split_seed=7)
    assert same(other.splits, gr.class_split(6, (2, 2, 2), 7))
    assert not same(other.splits, load(root, cache, "citeseer").splits)
    assert load(root, cache, "cora", classes=(5, 1, 1)).splits["train"].tolist() == [1, 3, 4, 5, 6]
    with pytest.raises(CmlearnError, match="three positive counts"):
        DATASETS.make_options("cora", {"classes": [3, 4]})
    with pytest.raises(CmlearnError, match="split_seed"):
        DATASETS.make_options("cora", {"split_seed": -1})
    cfg = Config().override(["data.name=amazon-photo", "data.classes=4,2,2"])
    assert cfg.data.options.classes == (4, 2, 2)


# --- the sampler --------------------------------------------------------------------------


def test_config_builds_a_node_task_source(pristine: tuple[Path, dict], cache: Path) -> None:
    cfg = Config().override(
        ["data.name=citeseer", "task.ways=2", "task.shots=1", "task.queries=5"]
        + ["task.eval_queries=10"]
    )
    source = build_source(cfg, Runtime(pristine[0], cache, torch.device("cpu")))
    assert isinstance(source, NodeTaskSource)
    runtime = Runtime(pristine[0], cache, torch.device("cpu"))
    five = build_source(cfg.override(["task.val_queries=5"]), runtime)  # TLP's validation tasks
    sizes = [five.sample(1, generator(s, 0, 0), s).query_x.shape[1] for s in ("val", "test")]
    assert sizes == [10, 20]
    assert source.sample(1, generator("val", 0, 0), "val").query_x.shape[1] == 20  # 0: as test
    assert (source.loss, source.metric, source.out_features, source.input_shape) == (
        "ce",
        "accuracy",
        2,
        (),
    )
    assert source.graph.n_nodes == len(pristine[1]["citeseer"].y)


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_task_structure(pristine: tuple[Path, dict], cache: Path, split: str) -> None:
    ds = load(pristine[0], cache, "coauthor-cs")
    ways, shots, queries, val_queries, eval_queries = 3, 2, 1, 3, 2
    source = NodeTaskSource(ds, ways, shots, queries, eval_queries, val_queries=val_queries)
    q = {"train": queries, "val": val_queries, "test": eval_queries}[split]
    batch = source.sample(64, generator("train", 0, 3), split)
    assert batch.support_x.shape == (64, ways * shots) and batch.support_x.dtype == torch.int64
    assert batch.query_x.shape == (64, ways * q)
    labels = torch.arange(ways)
    assert torch.equal(batch.support_y, labels.repeat_interleave(shots).expand(64, -1))
    assert torch.equal(batch.query_y, labels.repeat_interleave(q).expand(64, -1))
    pool = set(ds.splits[split].tolist())
    orders = set()
    for t in range(64):
        nodes = torch.cat([batch.support_x[t], batch.query_x[t]])
        assert len(set(nodes.tolist())) == len(nodes)  # support and query disjoint, distinct
        y = torch.cat([batch.support_y[t], batch.query_y[t]])
        classes = ds.graph.labels[nodes]
        remap = {int(a): int(b) for a, b in zip(y, classes, strict=True)}
        assert len(remap) == ways and len(set(remap.values())) == ways  # N distinct classes
        assert all(remap[int(a)] == int(b) for a, b in zip(y, classes, strict=True))
        assert set(remap.values()) <= pool
        orders.add(tuple(remap[i] for i in range(ways)))
    assert len(orders) > ways  # labels are a fresh permutation of classes per task


def test_sampling_is_seeded(pristine: tuple[Path, dict], cache: Path) -> None:
    source = NodeTaskSource(load(pristine[0], cache, "amazon-computer"), 2, 1, 5, 10)
    a = source.sample(8, generator("train", 0, 7))
    b = source.sample(8, generator("train", 0, 7))
    c = source.sample(8, generator("train", 0, 8))
    assert torch.equal(a.support_x, b.support_x) and torch.equal(a.query_x, b.query_x)
    assert not torch.equal(a.query_x, c.query_x)
    test = source.sample(8, generator("test", 1234, 0), "test")
    assert test.query_x.shape == (8, 20)  # 10 query nodes per class at test


def test_every_member_is_drawn(pristine: tuple[Path, dict], cache: Path) -> None:
    """Uniform over a class's nodes: no node of a split's classes is left out."""
    ds = load(pristine[0], cache, "cora")
    batch = NodeTaskSource(ds, 2, 1, 1, 1).sample(400, generator("train", 5, 0), "val")
    seen = set(batch.support_x.flatten().tolist()) | set(batch.query_x.flatten().tolist())
    wanted = torch.isin(ds.graph.labels, ds.splits["val"]).nonzero().flatten().tolist()
    assert seen == set(wanted)


# --- bad input: one-line errors, and exit status 2 from the CLI -----------------------------


def remove(part: str) -> Callable[[Path], None]:
    return lambda root: (root / "planetoid" / f"ind.citeseer.{part}").unlink()


def random_bytes(path: str) -> Callable[[Path], None]:
    return lambda root: (root / path).write_bytes(np.random.default_rng(0).bytes(3000))


def truncate(path: str) -> Callable[[Path], None]:
    def cut(root: Path) -> None:
        data = (root / path).read_bytes()
        (root / path).write_bytes(data[: len(data) // 2])

    return cut


def evil_pickle(root: Path) -> None:
    """A pickle that would run a command when loaded unrestricted."""

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    (root / "planetoid" / "ind.citeseer.graph").write_bytes(pickle.dumps(Evil(), protocol=2))


def bad_test_index(root: Path) -> None:
    (root / "planetoid" / "ind.citeseer.test.index").write_text("18\nnineteen\n")


def short_test_index(root: Path) -> None:
    path = root / "planetoid" / "ind.citeseer.test.index"
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:-1]))


def npz_without(key: str) -> Callable[[Path], None]:
    def drop(root: Path) -> None:
        path = root / "npz" / gr.GRAPHS["amazon-computer"].file
        with np.load(path) as f:
            arrays = {k: f[k] for k in f.files if k != key}
        np.savez(path, **arrays)

    return drop


def npz_labels_short(root: Path) -> None:
    path = root / "npz" / gr.GRAPHS["amazon-computer"].file
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    np.savez(path, **(arrays | {"labels": arrays["labels"][:-1]}))


def npz_bad_index(root: Path) -> None:
    path = root / "npz" / gr.GRAPHS["amazon-computer"].file
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    arrays["adj_indices"][0] = 10_000
    np.savez(path, **arrays)


def nothing(root: Path) -> None:
    pass


CITESEER = ["data.name=citeseer", "task.ways=2", "task.shots=1", "task.queries=5"]
AMAZON = ["data.name=amazon-computer", "task.ways=2", "task.shots=1", "task.queries=1"]
AMAZON += ["task.eval_queries=1"]
PLANETOID = "planetoid/ind.citeseer"
AMAZON_NPZ = "npz/amazon_electronics_computers.npz"
BAD: dict[str, tuple[Callable[[Path], None], list[str], str]] = {
    "missing planetoid": (
        remove("ty"),
        CITESEER,
        "CiteSeer not found: expected .*planetoid/ind.citeseer.ty .*kimiyoung/planetoid",
    ),
    "missing npz": (
        lambda root: (root / AMAZON_NPZ).unlink(),
        AMAZON,
        "Amazon-Computer not found: expected .*npz/amazon_electronics_computers.npz "
        ".*gnn-benchmark",
    ),
    "missing corafull": (  # TLP's CoraFull is PyG's CitationFull: graph2gauss's cora.npz
        lambda root: (root / "npz" / "cora_full.npz").unlink(),
        ["data.name=corafull", "task.ways=5"],
        "CoraFull not found: expected .*npz/cora_full.npz .*graph2gauss/raw/master/data/cora.npz",
    ),
    "random pickle": (random_bytes(f"{PLANETOID}.allx"), CITESEER, "allx is corrupt"),
    "truncated pickle": (truncate(f"{PLANETOID}.tx"), CITESEER, "tx is corrupt or truncated"),
    "evil pickle": (evil_pickle, CITESEER, "graph is corrupt .*posix.system, not Planetoid"),
    "bad test.index": (bad_test_index, CITESEER, "test.index is corrupt .*nineteen"),
    "short test.index": (short_test_index, CITESEER, "inconsistent Planetoid files"),
    "random npz": (random_bytes(AMAZON_NPZ), AMAZON, "computers.npz is corrupt or truncated"),
    "truncated npz": (truncate(AMAZON_NPZ), AMAZON, "computers.npz is corrupt or truncated"),
    "npz without adj_indptr": (npz_without("adj_indptr"), AMAZON, "has no 'adj_indptr' array"),
    "npz without attributes": (npz_without("attr_data"), AMAZON, "has no 'attr_data' array"),
    "npz without labels": (npz_without("labels"), AMAZON, "has no 'labels' array"),
    "npz labels short": (npz_labels_short, AMAZON, "inconsistent shapes"),
    "npz bad index": (npz_bad_index, AMAZON, "computers.npz is corrupt .*indices must be < 120"),
    "ways": (nothing, [*CITESEER, "task.ways=3"], "3-way tasks need 3 classes but the train"),
    "shots+queries": (
        nothing,
        [*AMAZON, "task.queries=12"],
        "1 shots \\+ 12 queries = 13 nodes per class, but a train class has only 12",
    ),
    "eval queries": (
        nothing,
        [*AMAZON, "task.eval_queries=12"],
        "= 13 nodes per class, but a val class has only 12",
    ),
    "val queries": (
        nothing,
        [*AMAZON, "task.val_queries=12"],
        "= 13 nodes per class, but a val class has only 12",
    ),
    "no standard split": (nothing, ["data.name=amazon-photo"], "set data.classes=TRAIN,VAL"),
    "split sizes": (nothing, [*CITESEER, "data.classes=3,2,2"], "needs 7 classes, the graph"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_a_one_line_error(root: Path, cache: Path, case: str) -> None:
    prepare, sets, message = BAD[case]
    prepare(root)
    cfg = Config().override(sets)
    with pytest.raises(CmlearnError, match=message) as err:
        build_source(cfg, Runtime(root, cache, torch.device("cpu")))
    assert "\n" not in str(err.value)


CLI_CASES = ["missing planetoid", "evil pickle", "npz without labels", "ways", "shots+queries"]


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
    prepare(root)
    monkeypatch.setenv("CMLEARN_CACHE", str(cache))
    args = ["train", "--preset", "omniglot-5w1s-cpu", "--data-root", str(root)]
    args += ["--device", "cpu", "--out", str(tmp_path / "run"), "--quiet"]
    for item in sets:
        args += ["--set", item]
    assert main(args) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("cmlearn: error: ")
    assert re.search(message, err)


# --- the real graphs ----------------------------------------------------------------------

# Counted in the files (after dropping self-loops and symmetrising); CiteSeer's and
# Amazon-Computer's undirected edges are the CML paper's Table 6 (4,552 and 245,861).
REAL_GRAPHS = {
    "cora": (2708, 10556, 1433, 7),
    "citeseer": (3327, 9104, 3703, 6),
    "amazon-computer": (13752, 491722, 767, 10),
    "amazon-photo": (7650, 238162, 745, 8),
    "coauthor-cs": (18333, 163788, 6805, 15),
}


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The real data root and a cache holding every graph, read once (~4 s)."""
    if not (REAL / "planetoid" / "ind.cora.graph").is_file():
        pytest.skip(f"no graphs in {REAL}")
    cache = tmp_path_factory.mktemp("graph-cache")
    for name in REAL_GRAPHS:
        gr.read_graph(name, REAL, cache)
    return REAL, cache


@pytest.mark.parametrize("name", list(REAL_GRAPHS))
def test_real_graph(real: tuple[Path, Path], name: str) -> None:
    graph = gr.read_graph(name, *real)
    nodes, edges, features, classes = REAL_GRAPHS[name]
    assert graph.n_nodes == nodes and graph.n_edges == edges and graph.n_classes == classes
    assert graph.features.shape == (nodes, features) and graph.adjacency.shape == (nodes, nodes)
    assert graph.adjacency.layout == torch.sparse_coo
    a = graph.adjacency
    rows = torch.zeros(nodes, dtype=torch.float64).index_add_(
        0, a.indices()[0], a.values().double()
    )
    assert torch.allclose(rows, torch.ones_like(rows), atol=1e-6)
    assert set(graph.features.values().unique().tolist()) == {1.0}  # 0/1 (binarised) features


def test_real_class_sizes_and_splits(real: tuple[Path, Path]) -> None:
    amazon = load(*real, "amazon-computer")
    sizes = [436, 2142, 1414, 542, 5158, 308, 487, 818, 2156, 291]  # counted in the npz
    assert amazon.counts.tolist() == sizes
    assert [amazon.splits[s].tolist() for s in ("train", "val", "test")] == [
        [1, 3, 4, 6],
        [8, 5, 0],
        [7, 2, 9],
    ]
    citeseer = load(*real, "citeseer")
    assert [citeseer.splits[s].tolist() for s in ("train", "val", "test")] == [
        [3, 5],
        [0, 4],
        [2, 1],
    ]
    assert load(*real, "coauthor-cs").counts.min() == 118
    raw = gr.read_graph("coauthor-cs", *real, binary=False)
    assert raw.features.values().max() == 105  # word counts, binarised by default


def test_real_citeseer_missing_test_ids(real: tuple[Path, Path]) -> None:
    """The 15 ids in CiteSeer's test range missing from ``tx`` ("isolated" in PyG's and Kipf's
    comments): zero features and label 0, as PyG gives them; yet every one has neighbours."""
    test = np.loadtxt(REAL / "planetoid" / "ind.citeseer.test.index", dtype=np.int64)
    missing = torch.tensor(sorted(set(range(test.min(), test.max() + 1)) - set(test.tolist())))
    assert len(missing) == 15
    graph = gr.read_graph("citeseer", *real)
    assert not torch.isin(missing, graph.features.indices()[0]).any()
    assert (graph.labels[missing] == 0).all()
    row, col = graph.adjacency.indices()
    linked = row[torch.isin(row, missing) & (row != col)].unique()
    assert torch.equal(linked, missing)


def test_real_node_tasks(real: tuple[Path, Path]) -> None:
    cfg = Config().override([*AMAZON[:2], "task.shots=5", "task.queries=5"])
    cfg = cfg.override(["task.eval_queries=10"])
    source = build_source(cfg, Runtime(*real, torch.device("cpu")))
    batch = source.sample(16, generator("val", 1234, 0), "val")
    assert batch.support_x.shape == (16, 10) and batch.query_x.shape == (16, 20)
    classes = source.graph.labels[torch.cat([batch.support_x, batch.query_x], 1)]
    assert torch.isin(classes, torch.tensor([8, 5, 0])).all()


def test_real_graphs_equal_pyg(real: tuple[Path, Path]) -> None:
    """Where PyTorch Geometric is installed: its readers (TLP's) give the same graphs."""
    pyg = pytest.importorskip("torch_geometric.io")
    for name, spec in gr.GRAPHS.items():
        if name not in REAL_GRAPHS:
            continue
        if spec.reader == "planetoid":
            ref = pyg.read_planetoid_data(str(REAL / "planetoid"), spec.file)
        else:
            ref = pyg.read_npz(str(REAL / "npz" / spec.file))
        graph = gr.read_graph(name, *real)
        assert torch.equal(graph.features.to_dense(), ref.x)
        assert torch.equal(graph.labels, ref.y)
        ours = graph.adjacency.indices()
        ours = ours[:, ours[0] != ours[1]]  # A: Â's pattern without the added self-loops
        order = torch.argsort(ref.edge_index[0] * graph.n_nodes + ref.edge_index[1])
        assert torch.equal(ours, ref.edge_index[:, order])


def test_data_check_citeseer_compares_the_published_size(real, capsys) -> None:
    """``cmlearn data check`` knows the graphs (issue 21): CiteSeer's 3,327 nodes in its
    2/2/2 class split, read by the same reader the presets use."""
    import json

    from cmlearn.app.cli import main

    root, cache = real
    assert main(["data", "check", "citeseer", "--data-root", str(root), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["nodes"] == 3327 and report["warnings"] == []
    assert [s["classes"] for s in report["splits"].values()] == [2, 2, 2]
