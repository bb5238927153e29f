"""Configuration overrides and round trips."""

from __future__ import annotations

import pytest

from cmlearn import CmlearnError
from cmlearn.app.config import Config, get_preset
from cmlearn.app.presets import PRESETS


def test_presets_cover_the_paper_settings():
    for k in (5, 10, 20):
        for suffix in ("", "-cpu"):
            cfg = get_preset(f"sinusoid-{k}shot{suffix}")
            assert cfg.task.shots == k and cfg.task.meta_batch == 4
            assert cfg.inner.steps == 1 and cfg.inner.lr == 0.01 and cfg.colearner.gamma == 0.2
            assert cfg.model.options.hidden == (40, 40)
            assert cfg.colearner.head.options.hidden == (40,)
    assert sum(name.startswith("sinusoid") for name in PRESETS) == 6


def test_override_and_round_trip():
    cfg = get_preset("sinusoid-5shot").with_algorithm("anil")
    cfg = cfg.override(["colearner.gamma=0.5", "model.hidden=20,30", "inner.first_order=true"])
    assert cfg.colearner.gamma == 0.5 and cfg.model.options.hidden == (20, 30)
    assert cfg.inner.first_order
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
        get_preset("sinusoid-5shot").override(["task.shots=0"])
    with pytest.raises(CmlearnError, match="task.val_queries must be >= 0"):
        get_preset("sinusoid-5shot").override(["task.val_queries=-1"])
    with pytest.raises(CmlearnError, match="unknown preset"):
        get_preset("miniimagenet")


def test_sections_name_a_registry_entry_with_its_own_options():
    cfg = Config().override(["model.name=conv4", "model.channels=32", "colearner.head.name=conv"])
    assert cfg.model.options.channels == 32 and cfg.model.options.bn == "transductive"
    assert cfg.colearner.head.options.layers == 2
    assert Config.from_dict(cfg.to_dict()) == cfg
    back = cfg.override(["model.name=mlp"])  # switching the entry resets its options
    assert back.model.options.hidden == (40, 40)
    assert cfg.override(["model.options.extra=3"]).model.options.extra == 3
    with pytest.raises(CmlearnError, match="unknown model 'resnet99'"):
        cfg.override(["model.name=resnet99"])
    with pytest.raises(CmlearnError, match="has no option 'hidden'"):
        cfg.override(["model.hidden=4"])
    with pytest.raises(CmlearnError, match="model.bn"):
        cfg.override(["model.bn=foo"])
    with pytest.raises(CmlearnError, match="unknown dataset"):
        cfg.override(["data.name=imagenet22k"])


def test_typed_assignments_skip_string_parsing():
    cfg = Config().apply([("train.steps", 7), ("algorithm", "anil")])
    assert cfg.train.steps == 7 and cfg.inner.body_scale == 0.0
    with pytest.raises(CmlearnError, match="train.seed"):
        cfg.apply([("train.seed", -1)])
    with pytest.raises(CmlearnError, match="train.steps"):
        cfg.apply([("train.steps", 10**20)])


def test_switching_algorithm_resets_what_the_previous_one_set():
    cfg = get_preset("sinusoid-5shot").with_algorithm("mamlpp").with_algorithm("maml")
    assert cfg.inner == get_preset("sinusoid-5shot").inner
    cfg = get_preset("sinusoid-5shot").override(["algorithm=metasgd", "algorithm=fomaml"])
    assert cfg.inner.learn_lr == "none" and cfg.inner.first_order
    kept = get_preset("sinusoid-5shot").override(["inner.steps=3", "algorithm=anil"])
    assert kept.inner.steps == 3  # settings no algorithm owns survive


@pytest.mark.parametrize(
    "assignment",
    ["train.meta_lr=inf", "colearner.gamma=nan", "inner.lr=1e400", "train.colearner_lr=-inf",
     "data.options=foo", "model.options=[1,2]"],
)  # fmt: skip
def test_non_finite_numbers_and_non_object_options_are_rejected(assignment):
    with pytest.raises(CmlearnError):
        get_preset("sinusoid-5shot").override([assignment])


def test_a_config_naming_an_algorithm_gets_its_overrides_and_may_change_one():
    """``from_dict`` applies the algorithm before the keys, so a preset cannot silently run
    another rule (a ``fomaml`` preset without ``first_order`` once ran second order)."""
    cfg = Config.from_dict({"algorithm": "fomaml", "inner": {"steps": 3}})
    assert cfg.inner.first_order and cfg.inner.steps == 3
    pp = Config.from_dict({"algorithm": "mamlpp", "inner": {"msl_epochs": 15}})
    assert pp.inner.learn_lr == "layer-step" and pp.inner.msl_epochs == 15
    assert Config.from_dict(pp.to_dict()) == pp  # a saved config round-trips


def test_a_retired_key_loads_at_its_off_value_and_is_refused_otherwise():
    old = Config().to_dict()
    old["inner"]["msl_anneal"] = 0.0  # what every older run folder's config.json holds
    assert Config.from_dict(old) == Config()
    old["inner"]["msl_anneal"] = 0.1
    with pytest.raises(CmlearnError, match="msl_anneal"):
        Config.from_dict(old)
