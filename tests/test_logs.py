"""TensorBoard logging: the same scalars as metrics.jsonl, read back from the event files."""

from __future__ import annotations

import json
import sys

import pytest

from cmlearn import CmlearnError
from cmlearn.app.cli import main
from cmlearn.app.logs import TENSORBOARD_DIR
from cmlearn.app.train import train

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import (  # noqa: E402
    EventAccumulator,
)


def _events(run) -> dict[str, list[tuple[int, float]]]:
    acc = EventAccumulator(str(run / TENSORBOARD_DIR), size_guidance={"scalars": 0})
    acc.Reload()
    return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}


def _expected(run) -> dict[str, list[tuple[int, float]]]:
    want: dict[str, list[tuple[int, float]]] = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        for key, value in record.items():
            if key == "gradients":
                for layer, stats in value.items():
                    for stat, x in stats.items():
                        want.setdefault(f"gradients/{layer}/{stat}", []).append((record["step"], x))
            elif key == "step_sizes":
                for name, x in value.items():
                    want.setdefault(f"step_sizes/{name}", []).append((record["step"], x))
            elif key != "step":
                want.setdefault(key, []).append((record["step"], value))
    return want


def _same(events, want) -> None:
    assert events.keys() == want.keys()
    for tag, points in want.items():
        assert [s for s, _ in events[tag]] == [s for s, _ in points], tag
        assert [v for _, v in events[tag]] == pytest.approx([v for _, v in points], rel=1e-6)


def test_tensorboard_events_mirror_the_metrics_log(tiny_cfg, tmp_path):
    cfg = tiny_cfg.override(
        [
            "colearner.mode=cml",
            "train.log=tensorboard",
            "train.analysis_every=10",
            "algorithm=metasgd",
        ]
    )
    train(cfg, tmp_path / "r", progress=False)
    events, want = _events(tmp_path / "r"), _expected(tmp_path / "r")
    assert {"train_loss", "train_co_loss", "val_mse"} <= events.keys()
    assert any(t.startswith("gradients/") and t.endswith("/cosine") for t in events)
    assert any(t.startswith("step_sizes/") for t in events)
    _same(events, want)


def test_a_resumed_run_has_no_duplicate_events(tiny_cfg, tmp_path):
    cfg = tiny_cfg.override(["train.log=tensorboard"])
    train(cfg.override(["train.steps=20"]), tmp_path / "r", progress=False)
    assert (
        main(["train", "--out", str(tmp_path / "r"), "--resume", "--steps", "40", "--quiet"]) == 0
    )
    _same(_events(tmp_path / "r"), _expected(tmp_path / "r"))


def test_tensorboard_missing_is_one_clear_error(tiny_cfg, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(CmlearnError, match=r"pip install 'cmlearn\[tensorboard\]'"):
        train(tiny_cfg.override(["train.log=tensorboard"]), tmp_path / "r", progress=False)
