"""The documentation: the README's shape, its test command is CI's, the guide's code runs, and
no page sends readers to files outside the repository. (The site itself is built by CI with
``mkdocs build --strict``, which fails on a broken link or anchor.)"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cmlearn.app.build import build_learner, build_source
from cmlearn.app.config import get_preset
from cmlearn.core.registry import COLEARNERS, DATASETS, MODELS
from cmlearn.core.tasks import generator

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"```(\w*)\n(.*?)```", re.S)


def blocks(path: Path, language: str) -> list[str]:
    return [code for lang, code in FENCE.findall(path.read_text()) if lang == language]


def test_readme_is_short_and_starts_with_the_two_setup_commands() -> None:
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 250
    first = FENCE.search(text)
    assert first is not None and text[: first.start()].strip() == "# cmlearn"
    commands = first.group(2).strip().splitlines()
    assert len(commands) == 2
    assert commands[0].endswith("cmlearn demo") and commands[1].endswith("pytest -q")
    ci = (ROOT / ".ci" / "run").read_text()
    assert commands[1] in ci  # CI runs exactly the README's test command


def test_no_citation_of_files_outside_the_repository() -> None:
    names = [n + ".md" for n in ("PAPER", "IMAGES", "GRAPHS", "DESIGN")] + ["../" + "shared"]
    files = [ROOT / "README.md", ROOT / "mkdocs.yml"]
    for folder in ("src", "docs", "tests", "benchmarks", "scripts"):
        files += [p for p in (ROOT / folder).rglob("*") if p.suffix in (".py", ".md", ".yml")]
    found = [
        f"{p.relative_to(ROOT)}: {name}"
        for p in files
        if p != Path(__file__).resolve()
        for name in names
        if name in p.read_text(errors="replace")
    ]
    assert not found


@pytest.fixture
def scratch_registries(monkeypatch: pytest.MonkeyPatch) -> None:
    """The guide registers entries; they are dropped again after the test."""
    for registry in (DATASETS, MODELS, COLEARNERS):
        monkeypatch.setattr(registry, "entries", dict(registry.entries))


def test_the_extending_guide_examples_run(scratch_registries: None) -> None:
    guide = ROOT / "docs" / "extending.md"
    examples = [code for code in blocks(guide, "python") if ".register(" in code]
    assert len(examples) == 3  # a backbone, a co-learner head, a dataset
    for code in examples:
        exec(compile(code, str(guide), "exec"), {})
    assert {"tanh-mlp"} <= set(MODELS.entries) and "linear" in COLEARNERS.entries

    cfg = get_preset("sinusoid-5shot-cpu").override(
        [
            "model.name=tanh-mlp",
            "model.width=16",
            "colearner.mode=cml",
            "colearner.head.name=linear",
        ]
    )
    learner = build_learner(cfg, source := build_source(cfg))
    names = {n.split(".")[0] + "." + n.split(".")[1] for n, _ in learner.net.named_parameters()}
    assert names == {"model.body", "model.head", "colearner.weight", "colearner.bias"}
    loss, _ = learner.meta_objective(source.sample(2, generator("train", 0, 0)))
    assert loss.isfinite()

    cfg = get_preset("omniglot-5w1s-cpu").override(
        ["data.name=blobs", "model.channels=8", "colearner.mode=cml"]
    )
    source = build_source(cfg)
    assert source.input_shape == (1, 16, 16)
    scores = build_learner(cfg, source).evaluate(source.sample(2, generator("test", 0)), "cml")
    assert scores["accuracy"].shape == (2,)


def test_the_configuration_example_runs() -> None:
    guide = ROOT / "docs" / "extending.md"
    (code,) = [c for c in blocks(guide, "python") if "build_learner(cfg" in c]
    scope: dict = {}
    exec(compile(code, str(guide), "exec"), scope)
    assert scope["scores"]["loss"].shape == (4,)
