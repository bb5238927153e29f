"""Confidence intervals, paired differences and the shared test tasks."""

from __future__ import annotations

import json
import math
from hashlib import sha256
from pathlib import Path

import numpy as np
import pytest
import torch

from cmlearn.app.evaluate import batches, fixed_tasks
from cmlearn.app.stats import paired, summarize
from cmlearn.core.tasks import SinusoidSource


def test_summary_is_mean_and_t_interval():
    values = np.array([1.0, 2.0, 3.0, 4.0])
    s = summarize(values)
    # t(0.975, 3) = 3.182446305284263; std = 1.2909944487358056
    assert s["mean"] == 2.5
    assert s["ci95"] == pytest.approx(3.182446305284263 * 1.2909944487358056 / 2)
    assert math.isnan(summarize(np.array([1.0]))["ci95"])


def test_paired_difference_removes_shared_task_difficulty():
    rng = np.random.default_rng(0)
    difficulty = rng.normal(0, 10, 500)
    a = difficulty + rng.normal(0, 0.1, 500)
    b = difficulty + 0.5 + rng.normal(0, 0.1, 500)
    d = paired(b, a)
    assert d["mean"] == pytest.approx(0.5, abs=0.05)
    assert d["ci95"] < summarize(b)["ci95"] / 10
    with pytest.raises(ValueError):
        paired(a, b[:10])


def test_test_tasks_are_fixed_and_prefix_stable(monkeypatch):
    import cmlearn.app.evaluate

    monkeypatch.setattr(cmlearn.app.evaluate, "CHUNK", 8)  # several chunks
    source = SinusoidSource(5, 10, 20)
    a = batches(fixed_tasks(source, 30, 7, "test"))
    b = batches(fixed_tasks(source, 12, 7, "test"))
    assert torch.equal(
        torch.cat([c.support_x for c in a])[:12], torch.cat([c.support_x for c in b])
    )
    val = batches(fixed_tasks(source, 30, 7, "val"))
    assert not torch.equal(a[0].support_x, val[0].support_x)
    assert a[0].query_x.shape[1] == 20  # evaluation uses eval_queries
    assert [c.n_tasks for c in batches(fixed_tasks(source, 30, 7, "test"), 5)] == [5, 3] * 3 + [
        5,
        1,
    ]


def test_run_scores_are_cached_by_everything_they_depend_on(tmp_path, monkeypatch):
    import cmlearn.app.evaluate as ev
    from cmlearn.app.build import build_source
    from cmlearn.app.cli import main
    from cmlearn.app.runs import MODEL, load_run
    from cmlearn.app.runtime import Runtime

    run = tmp_path / "run"
    fast = ["--set", "model.hidden=8,8", "--set", "train.val_tasks=5", "--set", "train.val_every=5"]
    assert main(["train", "--preset", "sinusoid-5shot-cpu", "--steps", "5", "--out", str(run),
                 "--colearner", "cml", "--quiet", *fast]) == 0  # fmt: skip
    cfg, learner = load_run(run)
    source = build_source(cfg, Runtime())
    plain = ev.scores  # the uncached scorer, counted from here on
    calls = []
    monkeypatch.setattr(ev, "scores", lambda *a: calls.append(a) or plain(*a))

    def scored(seed: int = 7, mode: str = "cml", learner=learner) -> np.ndarray:
        tasks = fixed_tasks(source, 12, seed, "test")
        return ev.run_scores(run, cfg, learner, tasks, ev.EvalSpec("mse", mode, 0, 4))

    first = scored()
    assert len(calls) == 1 and len(list((run / ev.SCORES).glob("*.npy"))) == 1
    assert np.array_equal(scored(), first) and len(calls) == 1  # read back, not rescored
    assert np.array_equal(first, plain(learner, fixed_tasks(source, 12, 7, "test"),
                                       ev.EvalSpec("mse", "cml", 0, 4)))  # fmt: skip
    scored(seed=8)  # other tasks
    scored(mode="cml-dagger")  # another evaluation mode
    assert len(calls) == 3
    # a new model.pt (a training still running) does not change what the loaded learner
    # scores: its key is the learner's tensors, not the file
    state = torch.load(run / MODEL, weights_only=True)
    key = next(k for k, v in state["model"].items() if v.is_floating_point())
    state["model"][key] = state["model"][key] + 1.0
    torch.save(state, run / MODEL)
    assert np.array_equal(scored(), first) and len(calls) == 3
    _, changed = load_run(run)  # and the new model, once loaded, misses
    new = scored(learner=changed)
    assert not np.array_equal(new, first) and len(calls) == 4
    # a damaged entry (truncated, empty, or another dtype) is scored again and replaced
    for damage in (lambda b: b[:20], lambda b: b"", lambda b: b.replace(b"<f8", b"<f4")):
        for entry in (run / ev.SCORES).glob("*.npy"):
            entry.write_bytes(damage(entry.read_bytes()))
        before = len(calls)
        assert np.array_equal(scored(learner=changed), new) and len(calls) == before + 1
    # a folder that cannot be written still gets its scores
    monkeypatch.setattr(ev, "atomic_write", lambda *_: (_ for _ in ()).throw(OSError("ro")))
    assert scored(seed=9).shape == (12,) and len(calls) == 8


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A 5-step sinusoid run (CML, so every evaluation mode applies)."""
    from cmlearn.app.cli import main

    run = tmp_path_factory.mktemp("scored") / "run"
    fast = ["--set", "model.hidden=8,8", "--set", "train.val_tasks=5", "--set", "train.val_every=5"]
    assert main(["train", "--preset", "sinusoid-5shot-cpu", "--steps", "5", "--out", str(run),
                 "--colearner", "cml", "--quiet", *fast]) == 0  # fmt: skip
    return run


def _eval_json(run, capsys, *args: str) -> dict:
    from cmlearn.app.cli import main

    capsys.readouterr()
    assert main(["eval", str(run), "--tasks", "50", "--json", *args]) == 0
    out = capsys.readouterr().out

    def refuse(name: str) -> None:
        raise AssertionError(f"non-standard JSON constant {name} printed")

    return json.loads(out, parse_constant=refuse)


def test_a_damaged_cache_entry_is_rescored_not_used(tiny_run, capsys, monkeypatch):
    """64 bytes overwritten in the middle of a cached ``.npy`` (its header intact, so numpy
    reads it) fail the SHA-256 stored beside it: the run is scored again, to the same number."""
    import cmlearn.app.evaluate as ev

    clean = _eval_json(tiny_run, capsys)
    (entry,) = (tiny_run / ev.SCORES).glob("*.npy")
    assert (
        entry.with_suffix(".sha256").read_text().strip() == sha256(entry.read_bytes()).hexdigest()
    )
    calls = []
    plain = ev.scores
    monkeypatch.setattr(ev, "scores", lambda *a: calls.append(a) or plain(*a))
    for fill in (b"\xff" * 64, bytes(range(64))):  # NaN bit patterns; random doubles
        data = bytearray(entry.read_bytes())
        middle = len(data) // 2
        data[middle : middle + 64] = fill
        entry.write_bytes(bytes(data))
        assert np.load(entry).shape == (50,)  # still a well-formed array: only the digest tells
        before = len(calls)
        assert _eval_json(tiny_run, capsys) == clean and len(calls) == before + 1
    # a missing digest is no proof either
    entry.with_suffix(".sha256").unlink()
    assert _eval_json(tiny_run, capsys) == clean and len(calls) == 3
    assert _eval_json(tiny_run, capsys) == clean and len(calls) == 3  # now proven: read back


def test_eval_json_prints_null_for_a_non_finite_mean(tiny_run, capsys, monkeypatch):
    import cmlearn.app.evaluate as ev

    monkeypatch.setattr(ev, "scores", lambda learner, chunks, spec: np.full(50, np.nan))
    result = _eval_json(tiny_run, capsys, "--steps", "3")  # a new key: scored (as NaN)
    assert result["mean"] is None and result["ci95"] is None


def test_each_scoring_is_recorded_in_a_plain_test_scores_file(tiny_run, capsys):
    """``RUN/test_scores.json``: one entry per (metric, mode, steps, ensemble, tasks) with the
    per-task values, readable with nothing but ``json``; rescoring replaces, never appends."""
    import cmlearn.app.evaluate as ev

    def entries() -> list[dict]:
        return json.loads((tiny_run / ev.TEST_SCORES).read_text())["scores"]

    steps = [_eval_json(tiny_run, capsys, "--mode", m)["steps"] for m in ("cml", "cml-dagger")]
    _eval_json(tiny_run, capsys)  # the cml scoring again
    found = {(e["mode"], e["steps"], e["n_tasks"]) for e in entries()}
    assert {("cml", steps[0], 50), ("cml-dagger", steps[1], 50)} <= found
    assert len([e for e in entries() if (e["mode"], e["steps"]) == ("cml", steps[0])]) == 1
    (tiny_run / ev.TEST_SCORES).write_text("{not json")  # a damaged record is started again
    result = _eval_json(tiny_run, capsys)
    (entry,) = entries()
    assert np.mean(entry["values"]) == pytest.approx(result["mean"])
    assert entry["eval_seed"] == result["eval_seed"] and entry["metric"] == "mse"
    assert len(entry["tasks"]) == 64
    assert entry["key"] in {p.stem for p in (tiny_run / ev.SCORES).glob("*.npy")}


def test_the_cache_key_hashes_only_the_code_that_can_change_a_score():
    import cmlearn.app.evaluate as ev

    root = Path(ev.__file__).resolve().parents[0]
    while root.name != "cmlearn":
        root = root.parent
    names = {p.resolve().relative_to(root).as_posix() for p in ev.scoring_files()}
    for needed in ("engine.py", "cml.py", "evaluate.py", "build.py"):
        assert any(n.endswith(needed) for n in names), needed
    for prefix in ("models/", "algorithms/", "tasks/"):
        assert any(prefix in n for n in names), prefix
    for excluded in ("bench", "cli.py", "compare.py", "plots.py", "train.py", "leaks.py"):
        assert not any(excluded in n.rsplit("/", 1)[-1] for n in names), excluded


def test_eval_builds_the_data_source_once(tiny_run, capsys, monkeypatch):
    import cmlearn.app.build
    import cmlearn.app.runs

    built = []
    real = cmlearn.app.build.build_source

    def counted(*args, **kwargs):
        built.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(cmlearn.app.build, "build_source", counted)
    monkeypatch.setattr(cmlearn.app.runs, "build_source", counted)
    _eval_json(tiny_run, capsys)
    assert len(built) == 1
