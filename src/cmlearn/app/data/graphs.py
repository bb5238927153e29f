"""Graphs for few-shot node classification: Planetoid and gnn-benchmark npz files.

Where the files go (the original distributions' names, under the data root):

- ``planetoid/ind.<prefix>.{allx, ally, tx, ty, graph, test.index}``: Cora, CiteSeer, PubMed
  (Yang et al. 2016). ``x`` and ``y`` (the labelled subset of the semi-supervised split) are
  the first rows of ``allx``/``ally`` and are not read.
- ``npz/<file>.npz``: Amazon-Computer, Amazon-Photo, Coauthor-CS, CoraFull (Shchur et al.
  2018): CSR arrays ``adj_{data,indices,indptr,shape}``, attributes as CSR ``attr_*`` or a
  dense ``attr_matrix``, and ``labels``.

The reading matches PyTorch Geometric's readers, through which TLP-FSNC (and so CML) loaded
every graph (``torch_geometric/io/npz.py``, ``io/planetoid.py``): edges undirected, self-loops
and duplicates dropped; npz
attributes binarised (``binary``, the default; Coauthor-CS stores word counts); the 15 ids in
CiteSeer's test range missing from ``tx`` ("isolated nodes" in PyG's and Kipf's comments, but
each has neighbours in ``graph``) become all-zero feature rows with label 0.
Features are otherwise raw (no normalisation). We read the files with numpy/scipy rather than
depend on PyG: two short readers against 14 extra packages (several compiled) and a 4 s
import, and its Planetoid reader unpickles without restriction, where ours accepts only the
classes those files hold. The graph is kept sparse — a dense Â of Amazon-Computer would take
0.76 GB — as ``torch.sparse_coo`` tensors, the sparse layout that ``torch.func`` can
differentiate through (CSR cannot). The processed tensors are cached once, keyed by the files'
SHA-256.

Class splits (train / val / test class counts) follow TLP-FSNC: CiteSeer 2/2/2, Cora 3/2/2,
Amazon-Computer 4/3/3, Coauthor-CS 5/5/5, CoraFull 40/15/15. The CML paper prints "20/10/10"
for CiteSeer, a typo: it has 6 classes, and TLP's code (whose protocol CML reused) uses 2/2/2.
TLP draws them with NumPy's legacy generator seeded 1234: test classes first, without
replacement from all ids, then validation classes from the remaining ids (ascending), the rest
is train. We replay that draw (``split_seed``), which gives TLP's default splits exactly
(e.g. CiteSeer train 3, 5; val 0, 4; test 2, 1). Amazon-Photo and PubMed have no published
split; set ``classes``.
"""

from __future__ import annotations

import codecs
import pickle
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

from cmlearn.app.data.about import Entry
from cmlearn.app.data.cache import cached, source_key
from cmlearn.core.errors import CmlearnError
from cmlearn.core.registry import DATASETS, check
from cmlearn.core.tasks.nodes import Graph, NodeDataset

PLANETOID_PARTS = ("allx", "ally", "tx", "ty", "graph", "test.index")
PLANETOID_URL = "https://github.com/kimiyoung/planetoid/raw/master/data/ind.{}.{}"
NPZ_URL = "https://github.com/shchur/gnn-benchmark/raw/master/data/npz/{}"
G2G_CORA = "https://github.com/abojchevski/graph2gauss/raw/master/data/cora.npz"
NPZ_KEYS = "adj_data, adj_indices, adj_indptr, adj_shape, attr_* (or attr_matrix), labels"
TLP_SEED = 1234
CSR = ("data", "indices", "indptr", "shape")


@dataclass(frozen=True)
class GraphSpec:
    """A registered graph: its title, reader (``planetoid`` or ``npz``), file, standard
    class split (``None``: no published one) and published size (nodes, classes), which
    ``cmlearn data check`` compares with what the reader finds."""

    title: str
    reader: str
    file: str
    classes: tuple[int, int, int] | None
    url: str = ""  # where the npz comes from, when not gnn-benchmark's ``NPZ_URL``
    nodes: int = 0
    n_classes: int = 0


GRAPHS = {
    # sizes as published: Planetoid (Yang et al. 2016), gnn-benchmark (Shchur et al. 2018)
    "cora": GraphSpec("Cora", "planetoid", "cora", (3, 2, 2), nodes=2708, n_classes=7),
    "citeseer": GraphSpec(  # CML: "20/10/10"
        "CiteSeer", "planetoid", "citeseer", (2, 2, 2), nodes=3327, n_classes=6
    ),
    "pubmed": GraphSpec("PubMed", "planetoid", "pubmed", None, nodes=19717, n_classes=3),
    "amazon-computer": GraphSpec(
        "Amazon-Computer",
        "npz",
        "amazon_electronics_computers.npz",
        (4, 3, 3),
        nodes=13752,
        n_classes=10,
    ),
    "amazon-photo": GraphSpec(
        "Amazon-Photo", "npz", "amazon_electronics_photo.npz", None, nodes=7650, n_classes=8
    ),
    "coauthor-cs": GraphSpec(
        "Coauthor-CS", "npz", "ms_academic_cs.npz", (5, 5, 5), nodes=18333, n_classes=15
    ),
    # TLP read CoraFull through PyG's CitationFull, i.e. graph2gauss's cora.npz (19,793 nodes)
    "corafull": GraphSpec(
        "CoraFull", "npz", "cora_full.npz", (40, 15, 15), G2G_CORA, nodes=19793, n_classes=70
    ),
}


@dataclass(frozen=True)
class GraphOptions:
    classes: tuple[int, ...] = ()  # train, val, test class counts; () = the standard split
    split_seed: int = TLP_SEED  # seed of TLP's class draw (1234 = TLP's default split)
    binary: bool = True  # npz attributes > 0 become 1, as PyG's reader (TLP) does

    def __post_init__(self) -> None:
        check(
            self.classes == () or (len(self.classes) == 3 and min(self.classes) > 0),
            f"classes must be three positive counts TRAIN,VAL,TEST (got {self.classes})",
        )
        check(0 <= self.split_seed < 2**32, "split_seed must be in [0, 2**32)")


# --- class splits -----------------------------------------------------------------------------


def class_split(n_classes: int, sizes: tuple[int, ...], seed: int = TLP_SEED) -> dict[str, Tensor]:
    """TLP-FSNC's draw: test classes from all ids, then val from the rest (ascending), with
    NumPy's legacy ``RandomState(seed)``; train is the rest, ascending."""
    train, val, test = sizes
    if train + val + test != n_classes:
        raise CmlearnError(
            f"class split {train}/{val}/{test} needs {train + val + test} classes, the graph "
            f"has {n_classes}"
        )
    rng = np.random.RandomState(seed)
    test_ids = rng.choice(n_classes, test, replace=False)
    rest = np.setdiff1d(np.arange(n_classes), test_ids)
    val_ids = rng.choice(rest, val, replace=False)
    train_ids = np.setdiff1d(rest, val_ids)
    ids = {"train": train_ids, "val": val_ids, "test": test_ids}
    return {split: torch.from_numpy(v.astype(np.int64)) for split, v in ids.items()}


# --- reading ----------------------------------------------------------------------------------


def graph_paths(spec: GraphSpec, root: Path) -> list[Path]:
    if spec.reader == "planetoid":
        folder = Path(root) / "planetoid"
        return [folder / f"ind.{spec.file}.{part}" for part in PLANETOID_PARTS]
    return [Path(root) / "npz" / spec.file]


def graph_url(spec: GraphSpec, path: Path) -> str:
    """Where the file ``path`` of graph ``spec`` is published."""
    if spec.reader == "planetoid":
        return PLANETOID_URL.format(spec.file, path.name.removeprefix(f"ind.{spec.file}."))
    return spec.url or NPZ_URL.format(spec.file)


def locate_graph(name: str, root: Path) -> list[Path]:
    """The files of graph ``name`` under ``root``; a missing one is an error saying where
    to download it."""
    spec = GRAPHS[name]
    paths = graph_paths(spec, root)
    for path in paths:
        if not path.is_file():
            raise CmlearnError(
                f"{spec.title} not found: expected {path} (download {graph_url(spec, path)} as "
                f"{path}, or point --data-root / CMLEARN_DATA at the folder holding "
                f"{path.parent.name}/)"
            )
    return paths


def read_graph(name: str, root: Path, cache_dir: Path, binary: bool = True) -> Graph:
    """Graph ``name`` from the cache or, once, from its files under ``root``; ``binary``: npz
    attributes > 0 become 1 (Planetoid features are 0/1 already)."""
    spec = GRAPHS[name]
    paths = locate_graph(name, root)
    try:
        key = source_key(paths, "graph", name)
    except OSError as err:
        raise CmlearnError(f"cannot read {spec.title}: {err}") from None
    read = read_planetoid if spec.reader == "planetoid" else read_npz
    payload = cached(cache_dir, f"graph-{name}", key, lambda: process(*read(paths)))
    features = payload["features"]
    if binary and spec.reader == "npz":  # PyG's npz reader does, its Planetoid one not
        values = torch.where(features.values() > 0, 1.0, features.values())
        features = torch.sparse_coo_tensor(
            features.indices(), values, features.shape, is_coalesced=True, check_invariants=False
        )
    return Graph(features, payload["labels"], payload["adjacency"])


Arrays = tuple[sp.csr_matrix, np.ndarray, np.ndarray, np.ndarray]  # X, labels, edge rows, cols


def process(
    features: sp.csr_matrix, labels: np.ndarray, rows: np.ndarray, cols: np.ndarray
) -> dict[str, Tensor]:
    """The cached tensors: raw features, labels and Â = D̃⁻¹(A + I) of the undirected graph
    with edges ``rows → cols`` (self-loops dropped, duplicates merged, both directions)."""
    n = len(labels)
    keep = rows != cols
    rows, cols = np.concatenate([rows[keep], cols[keep]]), np.concatenate([cols[keep], rows[keep]])
    a = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(n, n))
    a.data[:] = 1.0  # duplicates were summed
    a = a + sp.eye(n, dtype=np.float32, format="csr")
    degree = np.asarray(a.sum(1), dtype=np.float64).ravel()
    adjacency = sp.diags((1.0 / degree).astype(np.float32)) @ a
    return {
        "features": _coo(features.astype(np.float32)),
        "labels": torch.from_numpy(labels.astype(np.int64)),
        "adjacency": _coo(adjacency),
    }


def _coo(matrix: sp.spmatrix) -> Tensor:
    m = matrix.tocoo()
    index = torch.from_numpy(np.vstack([m.row, m.col]).astype(np.int64))
    values = torch.from_numpy(m.data.astype(np.float32))
    return torch.sparse_coo_tensor(index, values, m.shape, check_invariants=True).coalesce()


_reconstruct = (getattr(np, "_core", None) or np.core).multiarray._reconstruct  # NumPy 2 moved it
PICKLED = {  # every global a Planetoid pickle names (Python 2 and 3, NumPy 1 and 2)
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("collections", "defaultdict"): defaultdict,
    ("_codecs", "encode"): codecs.encode,  # bytes, as Python 3 writes protocol 2
    ("__builtin__", "list"): list,
    ("builtins", "list"): list,
}


class _PlanetoidUnpickler(pickle.Unpickler):
    """Rebuilds only what Planetoid pickles hold (arrays, sparse matrices, a dict of lists):
    unpickling anything else could run arbitrary code."""

    def find_class(self, module: str, name: str) -> object:
        if module.startswith("scipy.sparse") and name in ("csr_matrix", "csc_matrix", "coo_matrix"):
            return getattr(sp, name)
        if (module, name) not in PICKLED:
            raise pickle.UnpicklingError(f"holds a {module}.{name}, not Planetoid data")
        return PICKLED[(module, name)]


def _unpickle(path: Path) -> object:
    with _reading(path), open(path, "rb") as f:
        return _PlanetoidUnpickler(f, encoding="latin1").load()


def read_planetoid(paths: list[Path]) -> Arrays:
    """Nodes ``0..len(allx)-1`` are ``allx``/``ally``; ``tx``/``ty`` row ``i`` is node
    ``test.index[i]``; ids of the test range missing from ``test.index`` (CiteSeer's 15) keep
    zero features and label 0, as PyG's (and Kipf's) loaders give them."""
    path = dict(zip(PLANETOID_PARTS, paths, strict=True))
    items = {part: _unpickle(path[part]) for part in PLANETOID_PARTS[:-1]}
    with _reading(path["test.index"]):
        test = np.array([int(line) for line in path["test.index"].read_text().split()])
    with _reading(path["allx"]):
        allx = sp.csr_matrix(items["allx"], dtype=np.float32)
    with _reading(path["tx"]):
        tx = sp.csr_matrix(items["tx"], dtype=np.float32)
    ally, ty, graph = np.asarray(items["ally"]), np.asarray(items["ty"]), items["graph"]
    known = len(ally)
    n = max(known, int(test.max()) + 1 if len(test) else 0)

    def expect(ok: bool, what: str) -> None:
        if not ok:
            raise CmlearnError(f"{path['allx'].parent}: inconsistent Planetoid files ({what})")

    expect(allx.shape[0] == known and tx.shape[0] == len(ty) == len(test), "row counts differ")
    expect(allx.shape[1] == tx.shape[1] and ally.ndim == ty.ndim == 2, "shapes differ")
    expect(ally.shape[1] == ty.shape[1], "label widths differ")
    expect(len(np.unique(test)) == len(test) and bool((test >= known).all()), "test.index")
    try:
        heads = np.array(list(graph.keys()), dtype=np.int64)
        lists = [np.asarray(v, dtype=np.int64).ravel() for v in graph.values()]
    except (AttributeError, TypeError, ValueError):
        raise CmlearnError(f"{path['graph']} is not a dict of neighbour lists") from None
    rows = np.repeat(heads, [len(v) for v in lists])
    cols = np.concatenate(lists) if lists else np.zeros(0, np.int64)
    expect(bool(((rows >= 0) & (rows < n) & (cols >= 0) & (cols < n)).all()), "node ids")
    order = np.concatenate([np.arange(known), test])  # file row -> node id
    stacked = sp.vstack([allx, tx]).tocoo()
    features = sp.csr_matrix((stacked.data, (order[stacked.row], stacked.col)), (n, allx.shape[1]))
    onehot = np.zeros((n, ally.shape[1]), np.float32)
    onehot[:known], onehot[test] = ally, ty
    return features, onehot.argmax(1), rows, cols


def read_npz(paths: list[Path]) -> Arrays:
    (path,) = paths
    with _reading(path):
        with np.load(path, allow_pickle=False) as f:  # no pickles: arrays only
            attr = ["attr_matrix"] if "attr_matrix" in f else [f"attr_{k}" for k in CSR]
            needed = [f"adj_{k}" for k in CSR] + attr + ["labels"]
            missing = [k for k in needed if k not in f]
            if missing:
                raise CmlearnError(
                    f"{path} has no {missing[0]!r} array (a gnn-benchmark npz holds {NPZ_KEYS})"
                )
            adj = _csr(f, "adj")
            features = _csr(f, "attr") if "attr_data" in f else sp.csr_matrix(f["attr_matrix"])
            labels = np.asarray(f["labels"])
    n = adj.shape[0]
    if adj.shape != (n, n) or features.shape[0] != n or labels.shape != (n,):
        raise CmlearnError(
            f"{path}: inconsistent shapes (adjacency {adj.shape}, attributes {features.shape}, "
            f"labels {labels.shape})"
        )
    if labels.dtype.kind not in "iu" or (n and labels.min() < 0):
        raise CmlearnError(f"{path}: labels must be non-negative integers (one per node)")
    coo = adj.tocoo()  # the stored pattern is the graph (as PyG reads it), whatever the values
    return features, labels, coo.row.astype(np.int64), coo.col.astype(np.int64)


def _csr(f: Mapping, prefix: str) -> sp.csr_matrix:
    parts = (f[f"{prefix}_{k}"] for k in ("data", "indices", "indptr"))
    matrix = sp.csr_matrix(tuple(parts), shape=tuple(f[f"{prefix}_shape"]))
    matrix.check_format(full_check=True)
    return matrix


@contextmanager
def _reading(path: Path) -> Iterator[None]:
    """Turn what a damaged file raises (many types) into one line naming the file."""
    try:
        yield
    except CmlearnError:
        raise
    except Exception as err:
        text = str(err).strip().splitlines()
        detail = text[0] if text else type(err).__name__
        raise CmlearnError(f"{path} is corrupt or truncated ({detail})") from None


# --- registration -----------------------------------------------------------------------------


def graph_dataset(name: str, options: GraphOptions, root: Path, cache_dir: Path) -> NodeDataset:
    """Graph ``name`` with its class split (``options.classes`` or the standard one)."""
    spec = GRAPHS[name]
    graph = read_graph(name, root, cache_dir, options.binary)
    sizes = options.classes or spec.classes
    if sizes is None:
        raise CmlearnError(
            f"{name} has no standard class split; set data.classes=TRAIN,VAL,TEST "
            f"({graph.n_classes} classes)"
        )
    return NodeDataset.create(name, graph, class_split(graph.n_classes, sizes, options.split_seed))


def _builder(name: str) -> Callable[[GraphOptions, Path, Path], NodeDataset]:
    def build(options: GraphOptions, root: Path, cache_dir: Path) -> NodeDataset:
        return graph_dataset(name, options, root, cache_dir)

    return build


def _about(name: str, spec: GraphSpec) -> Entry:
    """A graph's catalog entry, from ``GRAPHS``: its files, published size and standard class
    split. The files are downloaded by hand: no checksums of them are recorded here to verify a
    download against."""
    paths = graph_paths(spec, Path("."))
    urls = ", ".join(graph_url(spec, p) for p in paths)
    return Entry(
        name,
        f"{spec.title} graph ({spec.nodes:,} nodes, {spec.n_classes} classes)",
        paths[0].parent.name,
        lambda root: locate_graph(name, root),
        spec.classes,
        total=spec.nodes,
        manual=f"download {urls} into <data root>/{paths[0].parent.name}/",
        cache=f"graph-{name}-",
        unit="nodes",
        domain="graphs",
    )


for _name, _spec in GRAPHS.items():
    _split = "/".join(map(str, _spec.classes)) if _spec.classes else "no standard"
    DATASETS.register(
        _name, GraphOptions, f"{_spec.title} ({_split} class split)", catalog=_about(_name, _spec)
    )(_builder(_name))
