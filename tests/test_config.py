"""Configuration overrides and round trips."""

from __future__ import annotations

import pytest

from cmlearn import CmlearnError
from cmlearn.config import Config
from cmlearn.presets import PRESETS, get_preset


def test_presets_cover_the_paper_settings():
    for k in (5, 10, 20):
        for suffix in ("", "-cpu"):
            cfg = get_preset(f"sinusoid-{k}shot{suffix}")
            assert cfg.task.shots == k and cfg.task.meta_batch == 4
            assert cfg.inner.steps == 1 and cfg.inner.lr == 0.01 and cfg.colearner.gamma == 0.2
            assert cfg.model.hidden == (40, 40) and cfg.colearner.hidden == (40,)
    assert len(PRESETS) == 6


def test_override_and_round_trip():
    cfg = get_preset("sinusoid-5shot").with_algorithm("anil")
    cfg = cfg.override(["colearner.gamma=0.5", "model.hidden=20,30", "inner.first_order=true"])
    assert cfg.colearner.gamma == 0.5 and cfg.model.hidden == (20, 30) and cfg.inner.first_order
    assert cfg.inner.body_scale == 0.0
    assert Config.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    ("assignment", "message"),
    [
        ("nope=1", "unknown config key"),
        ("train.nope=1", "unknown config key"),
        ("train=1", "section"),
        ("task.shots=abc", "bad value"),
        ("task.shots=2.5", "bad value"),
        ("inner.learn_lr=maybe", "learn_lr"),
        ("colearner", "key=value"),
    ],
)
def test_bad_overrides_are_rejected(assignment, message):
    with pytest.raises(CmlearnError, match=message):
        get_preset("sinusoid-5shot").override([assignment])


def test_validation():
    with pytest.raises(CmlearnError, match="shots"):
        get_preset("sinusoid-5shot").override(["task.shots=0"]).validate()
    with pytest.raises(CmlearnError, match="unknown preset"):
        get_preset("miniimagenet")
