"""Shared fixtures: tiny learners built from the library's own pieces."""

from __future__ import annotations

import dataclasses
import os
import tempfile
from pathlib import Path

import pytest
import torch

from cmlearn.app.config import get_preset
from cmlearn.core.algorithms import InnerRule, algorithm_rule
from cmlearn.core.cml import CoLearnerSpec
from cmlearn.core.engine import Learner
from cmlearn.core.models import MLP, Cooperative, build_colearner
from cmlearn.core.registry import DATASETS
from cmlearn.core.tasks import SinusoidFamily
from cmlearn.core.tasks.batch import generator

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
# Tests never touch the user's cache; the real data (the folder CI provides beside the
# checkout) is the default data root unless CMLEARN_DATA says otherwise.
# The cache is keyed by the source files' checksums, so one folder can serve every session.
os.environ["CMLEARN_CACHE"] = str(Path(tempfile.gettempdir()) / "cmlearn-test-cache")
os.environ.setdefault("CMLEARN_DATA", str(SHARED_DATA))
needs_omniglot = pytest.mark.skipif(
    not (Path(os.environ["CMLEARN_DATA"]) / "omniglot" / "images_background.zip").exists(),
    reason="Omniglot zips not found under CMLEARN_DATA",
)


def make_learner(
    algorithm: str = "maml",
    mode: str = "cml",
    gamma: float = 0.2,
    strategy: str = "batched",
    hidden: tuple[int, ...] = (8, 8),
    steps: int = 1,
    lr: float = 0.05,
    seed: int = 0,
) -> Learner:
    torch.manual_seed(seed)
    model = MLP(1, hidden, 1)
    co = build_colearner((hidden[-1],), 1, (6,)) if mode != "none" else None
    net = Cooperative(model, co)
    rule = algorithm_rule(algorithm, InnerRule(steps=steps, lr=lr))
    return Learner.create(net, rule, CoLearnerSpec(mode, gamma), "mse", strategy)


def sinusoid_batch(n_tasks: int = 3, shots: int = 5, queries: int = 7, seed: int = 0):
    return SinusoidFamily().sample(n_tasks, shots, queries, generator("test", seed, 99))


def central_difference(learner: Learner, batch, name: str, index: int, eps: float = 1e-6) -> float:
    """d(meta-loss)/d(parameter ``name``, flat ``index``) by central differences."""
    flat = learner.net.get_parameter(name).data.view(-1)
    old = flat[index].item()
    flat[index] = old + eps
    up = learner.meta_objective(batch)[0].item()
    flat[index] = old - eps
    down = learner.meta_objective(batch)[0].item()
    flat[index] = old
    return (up - down) / (2 * eps)


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module (``pytestmark = pytest.mark.usefixtures("one_thread")``):
    its tensors are tiny, and on a busy machine two threads make each small op wait (measured:
    sampling 16 tasks 0.24 s with two threads, 0.01 s with one). Restored after the module."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def recatalog(monkeypatch):
    """``recatalog(name, **changes)``: for this test, dataset ``name`` is registered with its
    catalog entry so changed (the registry's entry is replaced, and restored afterwards)."""

    def change(name: str, **changes):
        entry = DATASETS.entries[name]
        about = dataclasses.replace(entry.catalog, **changes)
        monkeypatch.setitem(DATASETS.entries, name, dataclasses.replace(entry, catalog=about))
        return about

    return change


@pytest.fixture
def float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


@pytest.fixture
def tiny_cfg():
    """The sinusoid preset shrunk to run in about a second."""
    return get_preset("sinusoid-5shot-cpu").override(
        [
            "train.steps=40",
            "train.val_every=20",
            "train.val_tasks=20",
            "train.log_every=10",
            "eval.tasks=50",
            "model.hidden=16,16",
            "colearner.head.hidden=8",
        ]
    )


def _data_skip(report: pytest.TestReport) -> bool:
    """A test skipped because the real datasets are absent (its reason names the data root)."""
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    return "CMLEARN_DATA" in reason or os.environ["CMLEARN_DATA"] in reason


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    """Say which real-data tests were skipped, why and how to run them: on a fresh clone the
    data folder is absent and they would otherwise skip without a word."""
    skipped = [r for r in terminalreporter.stats.get("skipped", []) if _data_skip(r)]
    if not skipped:
        return
    root = os.environ["CMLEARN_DATA"]
    terminalreporter.section("real-data tests skipped")
    terminalreporter.write_line(
        f"{len(skipped)} tests need the real datasets, which were not found under "
        f"CMLEARN_DATA={root}:"
    )
    for report in skipped:
        terminalreporter.write_line(f"  {report.nodeid}")
    terminalreporter.write_line(
        "to run them: fetch the data (cmlearn data fetch omniglot --data-root DIR; "
        "cmlearn data list shows what is found) and run CMLEARN_DATA=DIR python -m pytest"
    )
