"""The command line: the interface the checks use, and clean failures on bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cmlearn import CmlearnError
from cmlearn.app.cli import main

FAST = [
    "--set",
    "model.hidden=16,16",
    "--set",
    "colearner.head.hidden=8",
    "--set",
    "train.val_every=10",
    "--set",
    "train.val_tasks=20",
]


@pytest.fixture
def cli(capsys):
    """Run ``cmlearn ARGS`` in this process; returns (exit code, stdout, stderr)."""

    def run(*args: str) -> subprocess.CompletedProcess:
        code = main(list(args))
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, out, err)

    return run


def test_the_installed_entry_point_exits_nonzero_on_bad_input():
    result = subprocess.run(
        [sys.executable, "-m", "cmlearn", "train", "--preset", "nope"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        == "cmlearn: error: unknown preset 'nope'; run 'cmlearn presets' to list them"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--preset", "nope"], "unknown preset"),
        (["train", "--preset", "sinusoid-5shot-cpu", "--bogus"], "unrecognized arguments"),
        (["train", "--preset", "sinusoid-5shot-cpu", "--set", "task.shots=0"], "shots"),
        (["train", "--preset", "sinusoid-5shot-cpu", "--set", "task.shots=-3"], "shots"),
        (["train", "--preset", "sinusoid-5shot-cpu", "--set", "nokey=1"], "unknown config key"),
        (["train", "--preset", "sinusoid-5shot-cpu", "--algorithm", "reptile"], "invalid choice"),
        (["train", "--preset", "sinusoid-5shot-cpu", "--steps", "0"], "--steps"),
        (["eval", "/no/such/run"], "does not exist"),
        (
            ["compare", "--preset", "sinusoid-5shot-cpu", "--methods", "maml,magic"],
            "unknown method",
        ),
        (
            ["compare", "--preset", "sinusoid-5shot-cpu", "--methods", "maml", "--seeds", "a"],
            "seeds",
        ),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_input_gives_one_line_and_nonzero_exit(cli, args, message):
    result = cli(*args)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert message in lines[0] and "Traceback" not in result.stderr


def test_presets_lists_all(cli):
    out = cli("presets").stdout
    for k in (5, 10, 20):
        assert f"sinusoid-{k}shot " in out and f"sinusoid-{k}shot-cpu" in out


def test_train_then_eval_json(cli, tmp_path):
    run = tmp_path / "run"
    result = cli(
        "train",
        "--preset",
        "sinusoid-5shot-cpu",
        "--colearner",
        "cml",
        "--steps",
        "20",
        "--seed",
        "3",
        "--out",
        str(run),
        "--quiet",
        *FAST,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["steps"] == 20
    config = json.loads((run / "config.json").read_text())
    assert config["train"]["seed"] == 3 and config["colearner"]["mode"] == "cml"
    for mode in ("cml", "cml-dagger", "cml-dagger-code"):
        out = cli("eval", str(run), "--mode", mode, "--tasks", "30", "--json")
        assert out.returncode == 0, out.stderr
        report = json.loads(out.stdout)
        assert report["n_tasks"] == 30 and report["metric"] == "mse" and report["mode"] == mode
        assert report["mean"] > 0 and report["ci95"] > 0
    again = cli("train", "--preset", "sinusoid-5shot-cpu", "--steps", "20", "--out", str(run))
    assert again.returncode != 0 and "already holds a run" in again.stderr
    resumed = cli("train", "--out", str(run), "--resume", "--steps", "30", "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["steps"] == 30


def test_eval_dagger_needs_a_colearner(cli, tmp_path):
    run = tmp_path / "maml"
    assert (
        cli(
            "train",
            "--preset",
            "sinusoid-5shot-cpu",
            "--steps",
            "10",
            "--out",
            str(run),
            "--quiet",
            *FAST,
        ).returncode
        == 0
    )
    result = cli("eval", str(run), "--mode", "cml-dagger")
    assert result.returncode != 0 and "co-learner" in result.stderr


def test_compare_json_uses_the_same_tasks_for_every_method(cli, tmp_path):
    def compare(methods: str) -> dict:
        result = cli("compare", "--preset", "sinusoid-5shot-cpu", "--methods", methods, "--seeds",
                     "0,1", "--steps", "20", "--tasks", "40", "--out", str(tmp_path), "--json",
                     "--quiet", *FAST)  # fmt: skip
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    report = compare("maml,cml,anil+cml")
    rows = ("maml", "cml", "cml†", "anil+cml", "anil+cml†")  # † = the co-learner's output
    assert {(r["method"], r["seed"]) for r in report["results"]} == {
        (m, s) for m in rows for s in (0, 1)
    }
    for row in report["results"]:
        assert {"method", "seed", "metric", "mean", "ci95"} <= row.keys() and row["n"] == 40
    assert [p["method"] for p in report["paired"]] == list(rows[1:])
    # each method's median training time per run; † rows score the same runs, so they have none
    for row in report["summary"]:
        times = [r["train_seconds"] for r in report["results"] if r["method"] == row["method"]]
        if row["method"].endswith("†"):
            assert row["train_seconds"] is None
        else:  # the median of two seeds
            assert row["train_seconds"] == pytest.approx(sum(times) / 2) and min(times) > 0
    from cmlearn.app.compare import format_table

    lines = {line.split()[0]: line for line in format_table(report).splitlines()}
    assert lines["cml†"].endswith("—")
    assert lines["maml"].endswith(f"{report['summary'][0]['train_seconds']:.0f}")
    assert all({"mean", "ci95"} <= p.keys() for p in report["paired"])
    # anil+cml has no anil run to pair with; cml and cml† pair with their base, maml
    assert [(p["method"], p["baseline"]) for p in report["paired_base"]] == [
        ("cml", "maml"),
        ("cml†", "maml"),
    ]
    # a second compare reuses the finished runs and reproduces the numbers
    assert compare("maml,cml")["results"][:6] == report["results"][:6]


def test_compare_scores_a_cl_run_three_ways_as_table_4(cli, tmp_path):
    args = ["compare", "--preset", "sinusoid-5shot-cpu", "--methods", "maml,cl", "--seeds", "0",
            "--steps", "10", "--tasks", "20", "--out", str(tmp_path), "--quiet", *FAST]  # fmt: skip
    report = json.loads(cli(*args, "--json").stdout)
    rows = [r["method"] for r in report["summary"]]
    assert rows == ["maml", "cl", "cl†", "cl†-unadapted"]  # CL⋆, CL†, CL† w/o adaptation
    means = {r["method"]: r["mean"] for r in report["summary"]}
    assert len(set(means.values())) == 4
    text = cli(*args).stdout
    assert "†-unadapted rows: CL† with ϕ not adapted" in text
    # Eq. 9's CL† (--dagger paper) never adapts ϕ itself: no second row to tell apart
    paper = json.loads(cli(*args, "--json", "--dagger", "paper").stdout)
    assert [r["method"] for r in paper["summary"]] == ["maml", "cl", "cl†"]


def test_demo_writes_table_and_plots(cli, tmp_path):
    result = cli("demo", "--steps", "30", "--out", str(tmp_path / "demo"), "--quiet")
    assert result.returncode == 0, result.stderr
    assert "maml" in result.stdout and "cml" in result.stdout and "±" in result.stdout
    for name in ("fig2_sinusoid.png", "learning_curves.png", "compare.json"):
        assert (tmp_path / "demo" / name).stat().st_size > 1000


def test_ctrl_c_saves_and_the_run_resumes(tmp_path):
    """A real SIGINT: exit 130 with a resume hint, a checkpoint, and a resumable run."""
    import signal
    import time

    run = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "cmlearn",
        "train",
        "--preset",
        "sinusoid-5shot-cpu",
        "--quiet",
        "--steps",
        "100000",
        "--set",
        "train.val_every=50",
        "--out",
        str(run),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while not (run / "checkpoint.pt").exists() and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted at step" in err and "--resume" in err and "Traceback" not in err
    import torch

    stopped = torch.load(run / "checkpoint.pt")["state"]["step"]
    assert stopped > 0
    resumed = subprocess.run(
        [
            sys.executable,
            "-m",
            "cmlearn",
            "train",
            "--out",
            str(run),
            "--resume",
            "--steps",
            str(stopped + 10),
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["steps"] == stopped + 10


@pytest.mark.parametrize(
    ("damaged", "command", "message"),
    [
        ("model.pt", "eval", "corrupt checkpoint"),
        ("colearner.pt", "eval", "corrupt checkpoint"),
        ("config.json", "eval", "corrupt"),
        ("checkpoint.pt", "resume", "corrupt checkpoint"),
        ("config.json", "resume", "corrupt"),
    ],
)
def test_damaged_run_files_give_one_line_errors(cli, tmp_path, damaged, command, message):
    run = tmp_path / "run"
    assert cli("train", "--preset", "sinusoid-5shot-cpu", "--colearner", "cml", "--steps", "10",
               "--out", str(run), "--quiet", *FAST).returncode == 0  # fmt: skip
    data = (run / damaged).read_bytes()
    (run / damaged).write_bytes(data[: len(data) // 3])  # a truncated write
    args = ["eval", str(run)] if command == "eval" else ["train", "--out", str(run), "--resume"]
    result = cli(*args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "inner.lr=0"], "inner.lr"),
        (["--set", "model.hidden=[]"], "model.hidden"),
        (["--set", "model.hidden=0"], "model.hidden"),
        (["--colearner", "cml", "--set", "colearner.head.hidden=0"], "colearner.hidden"),
        (["--colearner", "cml", "--set", "colearner.point=nope"], "feature point"),
        (["--set", "train.log_every=0"], "log_every"),
        (["--set", "train.threads=-1"], "threads"),
        (["--set", "train.meta_lr=-1"], "meta_lr"),
        (["--set", "eval.steps=-1"], "eval.steps"),
        (["--set", "model.bn=foo"], "has no option 'bn'"),
        (["--set", "algorithm=foo"], "unknown algorithm"),
    ],
)
def test_bad_settings_are_rejected_before_training(cli, tmp_path, args, message):
    result = cli("train", "--preset", "sinusoid-5shot-cpu", "--steps", "5", "--out",
                 str(tmp_path / "r"), *args)  # fmt: skip
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr


def test_set_algorithm_changes_the_inner_rule(cli, tmp_path):
    run = tmp_path / "r"
    result = cli("train", "--preset", "sinusoid-5shot-cpu", "--steps", "5", "--out", str(run),
                 "--quiet", "--set", "algorithm=anil", *FAST)  # fmt: skip
    assert result.returncode == 0, result.stderr
    config = json.loads((run / "config.json").read_text())
    assert config["algorithm"] == "anil" and config["inner"]["body_scale"] == 0.0


def test_resume_takes_only_steps(cli, tmp_path):
    run = tmp_path / "r"
    assert cli("train", "--preset", "sinusoid-5shot-cpu", "--steps", "20", "--out", str(run),
               "--quiet", *FAST).returncode == 0  # fmt: skip
    for extra in (["--seed", "3"], ["--algorithm", "anil"], ["--set", "train.seed=9"]):
        result = cli("train", "--out", str(run), "--resume", *extra)
        assert result.returncode == 2 and "only --steps" in result.stderr
    fewer = cli("train", "--out", str(run), "--resume", "--steps", "10")
    assert fewer.returncode == 2 and "already at step 20" in fewer.stderr
    assert json.loads((run / "config.json").read_text())["train"]["steps"] == 20


def test_compare_rejects_the_same_method_twice(cli, tmp_path):
    result = cli("compare", "--preset", "sinusoid-5shot-cpu", "--methods", "cml,maml+cml",
                 "--out", str(tmp_path))  # fmt: skip
    assert result.returncode == 2 and "once" in result.stderr


def test_pair_folders_pairs_two_compares_on_their_shared_test_tasks(cli, tmp_path):
    """scripts/pair_folders.py: B − A per method equals the difference of the two compares'
    means (same tasks), and folders tested on other tasks are refused."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "pair_folders.py"
    spec = importlib.util.spec_from_file_location("pair_folders", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)

    def compare(out: str, *sets: str) -> dict:
        args = ["compare", "--preset", "sinusoid-5shot-cpu", "--methods", "maml,cml", "--seeds",
                "0,1", "--steps", "20", "--tasks", "30", "--out", str(tmp_path / out), "--json",
                "--quiet", "--dagger", "none", *FAST, *sets]  # fmt: skip
        result = cli(*args)
        assert result.returncode == 0, result.stderr
        return {r["method"]: r["mean"] for r in json.loads(result.stdout)["summary"]}

    a = compare("a")
    b = compare("b", "--set", "task.val_queries=7")  # another selection, the same test tasks
    report = script.pair_folders(tmp_path / "a", tmp_path / "b", ["maml", "cml"], [0, 1])
    for method in ("maml", "cml"):
        row = report["methods"][method]
        assert row["a"]["mean"] == pytest.approx(a[method])
        assert row["b_minus_a"]["mean"] == pytest.approx(b[method] - a[method])
    assert report["vs_first"]["cml"]["b"]["mean"] == pytest.approx(b["cml"] - b["maml"])
    compare("c", "--set", "task.eval_queries=9")  # other test tasks: nothing to pair
    assert script.main([str(tmp_path / "a"), str(tmp_path / "c"), "--methods", "maml,cml",
                        "--seeds", "0,1"]) == 2  # fmt: skip


def test_compare_from_pools_the_seeds_of_several_folders(cli, tmp_path, monkeypatch):
    """A later study adds seeds in a folder of its own; ``compare --from A B`` pairs them with
    the old ones, training nothing, with each run scored as its own study scored it."""
    import math
    import statistics

    from scipy import stats

    import cmlearn.app.compare

    def compare(out: str, seeds: str, *sets: str) -> dict:
        args = ["compare", "--preset", "sinusoid-5shot-cpu", "--methods", "maml,cml", "--seeds",
                seeds, "--steps", "20", "--tasks", "30", "--out", str(tmp_path / out), "--json",
                "--quiet", "--dagger", "none", *FAST, *sets]  # fmt: skip
        result = cli(*args)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout, parse_constant=_no_constant)

    a, b = compare("a", "0,1"), compare("b", "2")
    compare("c", "3", "--set", "task.eval_queries=9")  # another study
    assert b["pairs"][0]["seeds"]["ci95"] is None  # one seed: no interval, and no NaN
    monkeypatch.setattr(cmlearn.app.compare, "train", lambda *_, **__: pytest.fail("trained"))
    folders = [str(tmp_path / "a"), str(tmp_path / "b")]
    result = cli("compare", "--from", *folders, "--methods", "maml,cml", "--json",
                 "--dagger", "none")  # fmt: skip
    assert result.returncode == 0, result.stderr
    pooled = json.loads(result.stdout, parse_constant=_no_constant)
    assert pooled["seeds"] == [0, 1, 2] and pooled["tasks_digest"] == a["tasks_digest"]
    own = {(r["method"], r["seed"]): r["mean"] for r in a["results"] + b["results"]}
    assert {(r["method"], r["seed"]): r["mean"] for r in pooled["results"]} == own
    (pair,) = pooled["pairs"]
    assert (pair["method"], pair["baseline"]) == ("cml", "maml")
    deltas = [own["cml", s] - own["maml", s] for s in (0, 1, 2)]
    assert pair["seeds"]["deltas"] == pytest.approx(deltas)
    half = stats.t.ppf(0.975, 2) * statistics.stdev(deltas) / math.sqrt(3)
    assert pair["seeds"]["ci95"] == pytest.approx(half)
    assert pair["bootstrap"]["resamples"] == 10_000
    assert pair["bootstrap"]["low"] <= pair["seeds"]["mean"] <= pair["bootstrap"]["high"]
    text = cli("compare", "--from", *folders, "--methods", "maml,cml", "--seeds", "0,2").stdout
    assert "Δ cml − maml" in text and "seeds [0, 2]" in text
    # refused, each in one line: a seed nobody has, a run found twice, another study's runs
    for args, message in [
        ((*folders, "--seeds", "5"), "no run maml-s5, cml-s5"),
        ((folders[0], folders[0]), "each run may be found once"),
        ((*folders, str(tmp_path / "c"), "--seeds", "0,3"), "differ in task.eval_queries"),
        ((*folders, "--steps", "5"), "--steps cannot change them"),
        ((*folders, "--out", folders[1]), "is one of the --from folders"),
    ]:
        result = cli("compare", "--from", *args, "--methods", "maml,cml")
        assert result.returncode == 2 and message in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    result = cli("compare", "--methods", "maml,cml")
    assert result.returncode == 2 and "--preset (train) or --from" in result.stderr


def test_runs_scored_on_other_tasks_are_not_paired(cli, tmp_path):
    """``score_runs`` compares the test tasks' digests of runs built from other settings."""
    from cmlearn.app.compare import Method, score_runs
    from cmlearn.app.config import Config
    from cmlearn.app.runs import read_config
    from cmlearn.app.runtime import Runtime

    for out, sets in (("a", []), ("c", ["--set", "task.eval_queries=9"])):
        assert cli("compare", "--preset", "sinusoid-5shot-cpu", "--methods", "maml", "--steps",
                   "10", "--tasks", "10", "--out", str(tmp_path / out), "--quiet", *FAST,
                   *sets).returncode == 0  # fmt: skip
    runs = {(m, 0): tmp_path / f / "maml-s0" for m, f in (("maml", "a"), ("other", "c"))}
    runs = {k: (v, read_config(v)) for k, v in runs.items()}
    methods = [Method("maml", "maml", "none"), Method("other", "maml", "none")]
    base: Config = runs["maml", 0][1]
    with pytest.raises(CmlearnError, match="tested on different tasks"):
        score_runs(base, methods, [0], runs, Runtime(), "none")


def _no_constant(name: str) -> None:
    raise AssertionError(f"non-standard JSON constant {name} printed")


# --- a CLI that says what it is doing (issue 21, §4) -----------------------------------------

STEPS_40 = ["train", "--preset", "sinusoid-5shot-cpu", "--steps", "40", *FAST,
            "--set", "train.log_every=15"]  # fmt: skip


@pytest.fixture
def shown_run(cli, tmp_path):
    """A 40-step run trained with progress on (stderr is captured: not a terminal)."""
    run = tmp_path / "run"
    result = cli(*STEPS_40, "--out", str(run))
    assert result.returncode == 0, result.stderr
    return run, result.stderr


def test_the_training_bar_shows_the_latest_loss_and_each_new_best(shown_run):
    run, err = shown_run
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    bests, best = [], None
    for r in records:
        if "val_mse" in r and (best is None or r["val_mse"] < best):
            best = r["val_mse"]
            bests.append(f"step {r['step']}: new best val_mse {best:.4f}")
    assert bests and all(b in err for b in bests), err
    last = [line for line in err.splitlines() if "100% (40/40)" in line]
    assert len(last) == 1
    final_loss = [r["train_loss"] for r in records if r["step"] == 40 and "train_loss" in r][0]
    assert f"loss {final_loss:.4f}" in last[0] and " best val_mse " in last[0]  # step 40's
    # validation comes after the step's line: the best shown there is an earlier step's
    first = [line for line in err.splitlines() if "(2/40)" in line]  # 5%: before any log record
    assert first and " loss " in first[0], err


def test_resuming_a_finished_run_says_so_and_how_to_train_on(shown_run, cli, capsys):
    run, _ = shown_run
    result = cli("train", "--out", str(run), "--resume")
    assert result.returncode == 0
    assert f"{run} is finished (40 of 40 steps)" in result.stderr
    assert f"cmlearn train --out {run} --resume --steps 80" in result.stderr
    from cmlearn.app.runs import read_config
    from cmlearn.app.train import train

    train(read_config(run), run, resume=True)  # as compare reuses a finished run: no word
    assert "is finished" not in capsys.readouterr().err


def test_eval_shows_progress_over_the_test_tasks_on_stderr(shown_run, cli):
    run, _ = shown_run
    result = cli("eval", str(run), "--tasks", "40", "--json")
    assert result.returncode == 0
    json.loads(result.stdout)  # stdout stays the result alone
    lines = result.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("eval cml on 40 test tasks: 100% (40/40)"), lines
    assert len(lines) <= 21  # one line per 5 % when not a terminal
    quiet = cli("eval", str(run), "--tasks", "40", "--quiet")
    assert quiet.returncode == 0 and quiet.stderr == ""


def test_a_test_run_without_the_real_data_says_what_it_skipped_and_how_to_run_it(tmp_path):
    import os
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "CMLEARN_DATA": str(tmp_path / "absent")}
    argv = ["-q", "-p", "no:cacheprovider", "tests/test_graph_models.py", "-k", "citeseer_preset"]
    result = subprocess.run(
        [sys.executable, "-m", "pytest", *argv],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=root,
        env=env,
    )
    assert "real-data tests skipped" in result.stdout, result.stdout
    assert "test_citeseer_preset_trains_and_tests[gmeta]" in result.stdout
    assert f"CMLEARN_DATA={tmp_path / 'absent'}" in result.stdout
    assert "to run them:" in result.stdout


def test_presets_are_grouped_under_headers_each_listed_once(cli):
    from cmlearn.app.presets import PRESETS

    out = cli("presets").stdout
    headers = [line for line in out.splitlines() if line and not line.startswith(" ")]
    assert headers[0] == "sinusoid regression: sinusoid (6)"
    assert "few-shot node classification: citeseer (12)" in headers
    listed = [line.split()[0] for line in out.splitlines() if line.startswith("  ")]
    assert sorted(listed) == sorted(PRESETS)  # every preset, once
    assert listed.index("sinusoid-5shot") < listed.index("sinusoid-10shot")  # natural order


def test_presets_of_a_table_print_each_paper_number_once(cli):
    out = cli("presets", "--table", "3").stdout
    row = next(line for line in out.splitlines() if "citeseer-2w1s-gmeta " in line)
    assert row.count("55.15") == 1 and row.count("61.17") == 1, row


def test_a_closed_pipe_is_not_a_traceback():
    result = subprocess.run(
        f"{sys.executable} -m cmlearn presets | head -1", shell=True, capture_output=True,
        text=True, timeout=300,
    )  # fmt: skip
    assert result.stdout.startswith("sinusoid regression") and result.stderr == ""


def test_a_run_without_a_colearner_pairs_whatever_its_colearner_settings():
    """MAML trained with γ = 0.2 (the default) and CML with γ = 0.5 are one study; two CML
    runs with different γ are not."""
    from cmlearn.app.compare import _same_study
    from cmlearn.app.config import get_preset

    base = get_preset("sinusoid-5shot-cpu")
    maml = base.apply([("colearner.mode", "none"), ("colearner.gamma", 0.2)])
    cml = base.apply([("colearner.mode", "cml"), ("colearner.gamma", 0.5)])
    _same_study(Path("maml-s0"), maml, Path("cml-s0"), cml, ("colearner.mode",))
    other = cml.apply([("colearner.gamma", 0.2)])
    with pytest.raises(CmlearnError, match="differ in colearner.gamma: not runs of one study"):
        _same_study(Path("cml-s0"), cml, Path("cml-s1"), other, ("colearner.mode",))
