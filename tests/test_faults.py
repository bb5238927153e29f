"""Faults a hostile user (or a scheduler, or a full disk) causes: nothing lost, one-line errors."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cmlearn import CmlearnError
from cmlearn.app import files
from cmlearn.app.cli import main
from cmlearn.app.runs import CHECKPOINT, COLEARNER, METRICS, MODEL, RunFolder, read_state
from cmlearn.app.train import _StopFlag, outer_step, train
from tests.test_train import _assert_same_run, _records

SLOW_RUN = [
    "train",
    "--preset",
    "sinusoid-5shot-cpu",
    "--steps",
    "100000",
    "--quiet",
    "--set",
    "train.val_every=50",
    "--set",
    "train.val_tasks=10",
]


def _spawn(*args: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "cmlearn", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _wait_for(predicate, timeout: float = 120.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.05)


def _one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


# --- two runs, one folder -------------------------------------------------------------------


def test_a_second_run_into_a_busy_folder_is_refused(tiny_cfg, tmp_path):
    with RunFolder(tmp_path / "r").lock():
        with pytest.raises(CmlearnError, match="in use by another cmlearn process"):
            train(tiny_cfg, tmp_path / "r", progress=False)
    train(tiny_cfg, tmp_path / "r", progress=False)  # released: the run goes ahead


def test_a_killed_run_leaves_no_stuck_lock_and_no_temporaries(tmp_path):
    run = tmp_path / "r"
    proc = _spawn(*SLOW_RUN, "--out", str(run))
    _wait_for(lambda: (run / CHECKPOINT).exists())
    (run / ".checkpoint.pt.abc.tmp").write_bytes(b"half")  # as a kill mid-write leaves it
    proc.kill()
    proc.wait(timeout=60)
    code = main(["train", "--out", str(run), "--resume", "--steps", "3", "--quiet"])
    assert code == 0
    assert not list(run.glob(".*.tmp"))


def test_two_processes_into_one_folder(tmp_path):
    run = tmp_path / "r"
    first = _spawn(*SLOW_RUN, "--out", str(run))
    _wait_for(lambda: (run / CHECKPOINT).exists())
    second = subprocess.run(
        [sys.executable, "-m", "cmlearn", "train", "--out", str(run), "--resume", "--quiet"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    first.kill()
    first.wait(timeout=60)
    assert second.returncode == 2
    assert f"pid {first.pid}" in _one_line(second.stderr)


# --- stopping: early checkpoint, SIGTERM, a second signal while saving -----------------------


def test_a_run_stopped_before_its_first_validation_resumes_exactly(tiny_cfg, tmp_path):
    """The first checkpoint is written before step 1, so even an abort (no save) at step 3
    leaves a folder that --resume continues into the uninterrupted run."""
    train(tiny_cfg, tmp_path / "full", progress=False)

    def abort_at_3(learner, optimizer, batch, progress, *rest):
        if progress.fraction * tiny_cfg.train.steps >= 3:  # a Stage: fraction and epoch
            raise KeyboardInterrupt
        return outer_step(learner, optimizer, batch, progress, *rest)

    with pytest.raises(KeyboardInterrupt):
        train(tiny_cfg, tmp_path / "cut", progress=False, step_fn=abort_at_3)
    assert read_state(tmp_path / "cut" / CHECKPOINT)["state"]["step"] == 0
    train(tiny_cfg, tmp_path / "cut", resume=True, progress=False)
    _assert_same_run(tmp_path / "full", tmp_path / "cut")


def test_sigterm_saves_and_exits_like_ctrl_c(tmp_path):
    run = tmp_path / "r"
    proc = _spawn(*SLOW_RUN, "--out", str(run))
    _wait_for(lambda: (run / METRICS).exists() and (run / METRICS).stat().st_size > 0)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130
    line = _one_line(err)
    assert "terminated (SIGTERM)" in line and "--resume" in line
    saved = read_state(run / CHECKPOINT)["state"]["step"]
    assert saved >= 50  # every step done, not only the last validation's
    assert main(["train", "--out", str(run), "--resume", "--steps", str(saved + 2)]) == 0


def test_a_second_signal_waits_for_a_write_in_progress(monkeypatch):
    flag = _StopFlag()
    flag._handler(signal.SIGINT, None)
    assert flag.requested and flag.reason == "interrupted"
    monkeypatch.setattr(files, "_writing", 1)
    flag._handler(signal.SIGINT, None)  # during a write: no abort
    monkeypatch.setattr(files, "_writing", 0)
    with pytest.raises(KeyboardInterrupt):
        flag._handler(signal.SIGINT, None)
    term = _StopFlag()
    term._handler(signal.SIGTERM, None)
    assert term.reason.startswith("terminated")


def test_an_interrupted_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "f.pt"
    files.atomic_save({"v": torch.ones(3)}, target)

    def slow(f):
        f.write(b"partial")
        assert files.writing()
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        files.atomic_write(target, slow)
    assert torch.equal(torch.load(target)["v"], torch.ones(3))
    assert not list(tmp_path.glob(".*.tmp")) and not files.writing()


def test_atomic_path_renames_only_a_finished_file_and_fsyncs_it(tmp_path, monkeypatch):
    target = tmp_path / "sub" / "cache.npy"  # the folder is made
    synced = []
    real_fsync = files.os.fsync
    monkeypatch.setattr(files.os, "fsync", lambda fd: synced.append(fd) or real_fsync(fd))
    with files.atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp.name.endswith(".tmp") and not target.exists()
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new" and len(synced) == 1
    with pytest.raises(ValueError), files.atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise ValueError
    with pytest.raises(CmlearnError, match="cannot write .*cache.npy: disk full"):
        with files.atomic_path(target):
            raise OSError("disk full")
    assert target.read_bytes() == b"new" and not list(target.parent.glob(".*.tmp"))


def test_ctrl_c_while_importing_prints_no_traceback():
    for delay in (0.1, 0.3, 0.6, 1.0, 1.5):  # somewhere inside `import torch` on any machine
        proc = _spawn("train", "--preset", "sinusoid-5shot-cpu", "--steps", "5", "--quiet")
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
        assert "Traceback" not in err, err
        assert proc.returncode in (130, -signal.SIGINT, 0), (proc.returncode, err)


# --- a full disk ----------------------------------------------------------------------------


def test_a_full_disk_keeps_the_previous_checkpoint(tiny_cfg, tmp_path, monkeypatch):
    run = tmp_path / "r"
    train(tiny_cfg.override(["train.steps=20"]), run, progress=False)
    before = (run / CHECKPOINT).read_bytes()
    real_open = open

    class Full:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            self.f.write(bytes(data)[:100])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def full_open(path, mode="r"):  # the atomic writer's stream fills the disk
        return Full(real_open(path, mode)) if mode == "wb" else real_open(path, mode)

    monkeypatch.setattr(files, "open", full_open, raising=False)
    with pytest.raises(CmlearnError, match="No space left on device") as err:
        train(tiny_cfg, run, resume=True, progress=False)
    assert len(str(err.value).splitlines()) == 1
    assert (run / CHECKPOINT).read_bytes() == before
    assert not list(run.glob(".*.tmp"))


def test_an_unwritable_out_is_one_line(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for out in (blocker / "run", Path("/proc/cmlearn-x")):
        assert main(["train", "--preset", "sinusoid-5shot-cpu", "--out", str(out)]) == 2
        assert "cannot use" in _one_line(capsys.readouterr().err)


# --- damaged metrics and foreign files ------------------------------------------------------


@pytest.fixture
def half_run(tiny_cfg, tmp_path):
    run = tmp_path / "r"
    train(tiny_cfg.override(["train.steps=20"]), run, progress=False)
    return run


def test_a_torn_metrics_line_is_repaired_and_said(half_run, tiny_cfg, tmp_path, capsys):
    with open(half_run / METRICS, "a") as f:
        f.write('{"step": 21, "train_lo')
    train(tiny_cfg, half_run, resume=True, progress=False)
    assert "dropped a torn last line" in capsys.readouterr().err
    train(tiny_cfg, tmp_path / "full", progress=False)
    assert _records(half_run) == _records(tmp_path / "full")


@pytest.mark.parametrize("damage", ["junk", "truncated"])
def test_other_metrics_damage_is_refused(half_run, tiny_cfg, damage):
    lines = (half_run / METRICS).read_bytes().splitlines(keepends=True)
    if damage == "junk":
        lines[1] = b"\x00\xff\xfe binary\n"
        match = "damaged at line 2"
    else:
        lines = lines[:-2]
        match = "was truncated or edited"
    (half_run / METRICS).write_bytes(b"".join(lines))
    with pytest.raises(CmlearnError, match=match):
        train(tiny_cfg, half_run, resume=True, progress=False)


@pytest.mark.parametrize("name", [CHECKPOINT, MODEL])
def test_a_tensor_file_of_another_structure_is_named(half_run, name):
    torch.save({"weights": torch.zeros(2)}, half_run / name)
    with pytest.raises(CmlearnError, match=rf"not a cmlearn {name[:-3]} file \(missing"):
        read_state(half_run / name)


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_a_file_with_pickled_code_is_refused_and_never_runs(half_run, capsys, monkeypatch):
    monkeypatch.chdir(half_run)
    torch.save({"model": _Payload()}, half_run / MODEL)
    assert main(["eval", str(half_run)]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "pickled Python objects" in line
    assert "weights_only" not in line.lower() and "trust" not in line.lower()
    assert not (half_run / "pwned").exists()


# --- settings checked, not coerced ----------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--methods", "maml+,cml"], "unknown method 'maml+'"),
        (["--methods", "maml,maml"], "method maml given twice"),
        (["--methods", "maml", "--seeds", "0,0"], "seed 0 given twice"),
    ],
)
def test_compare_refuses_ambiguous_lists(args, message, tmp_path, capsys):
    code = main(["compare", "--preset", "sinusoid-5shot-cpu", "--out", str(tmp_path), *args])
    assert code == 2
    assert message in _one_line(capsys.readouterr().err)
    assert not list(tmp_path.iterdir())  # refused before anything trained


def test_an_unknown_preset_in_a_config_file_is_refused(half_run, capsys):
    data = json.loads((half_run / "config.json").read_text())
    data["preset"] = "sinusoid-7shot"
    (half_run / "config.json").write_text(json.dumps(data))
    assert main(["eval", str(half_run)]) == 2
    assert "unknown preset 'sinusoid-7shot'" in _one_line(capsys.readouterr().err)


# --- every saved file proves it is the one written (issue 21, §1) ----------------------------


@pytest.fixture
def cml_run(tiny_cfg, tmp_path):
    """A finished 20-step CML run (so it has checkpoint.pt, model.pt and colearner.pt)."""
    run = tmp_path / "cml"
    train(tiny_cfg.override(["train.steps=20", "colearner.mode=cml"]), run, progress=False)
    return run


def _overwrite_inside(path: Path, n: int = 8) -> None:
    """Overwrite ``n`` bytes in the middle of the largest tensor's data in ``path`` (bytes a
    third of the way into a small file may fall in a record's padding, which loads right)."""
    import struct
    import zipfile

    with zipfile.ZipFile(path) as archive:
        info = max(archive.infolist(), key=lambda i: i.file_size)
    data = bytearray(path.read_bytes())
    name_len, extra_len = struct.unpack(
        "<HH", data[info.header_offset + 26 : info.header_offset + 30]
    )
    at = info.header_offset + 30 + name_len + extra_len + info.file_size // 2
    data[at : at + n] = bytes((b + 1) % 256 for b in data[at : at + n])
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("name", "command"),
    [(MODEL, "eval"), (COLEARNER, "eval"), (CHECKPOINT, "resume"), (MODEL, "resume")],
)
def test_bytes_overwritten_inside_a_tensor_file_are_refused(cml_run, name, command, capsys):
    _overwrite_inside(cml_run / name)
    if command == "eval":
        argv = ["eval", str(cml_run), "--tasks", "4", "--quiet"]
    else:
        argv = ["train", "--out", str(cml_run), "--resume", "--steps", "40", "--quiet"]
    before = (cml_run / METRICS).read_bytes()
    assert main(argv) == 2  # resuming checks the best model too: found now, not at eval
    line = _one_line(capsys.readouterr().err)
    assert f"corrupt checkpoint file {cml_run / name}" in line and "CRC-32" in line, line
    assert (cml_run / METRICS).read_bytes() == before  # nothing trained on


def test_a_truncated_or_foreign_file_is_not_an_intact_archive(cml_run):
    data = (cml_run / MODEL).read_bytes()
    (cml_run / MODEL).write_bytes(data[: len(data) // 2])
    with pytest.raises(CmlearnError, match="not an intact tensor archive"):
        read_state(cml_run / MODEL)
    assert files.damage(cml_run / CHECKPOINT) is None


def test_an_edited_config_is_refused_on_resume_and_eval_naming_the_keys(cml_run, capsys):
    cfg = json.loads((cml_run / "config.json").read_text())
    cfg["inner"]["lr"] = 0.123
    cfg["task"]["shots"] = 3
    (cml_run / "config.json").write_text(json.dumps(cfg))
    before = (cml_run / CHECKPOINT).read_bytes()
    for argv in (
        ["train", "--out", str(cml_run), "--resume", "--steps", "40", "--quiet"],
        ["eval", str(cml_run), "--tasks", "4", "--quiet"],
    ):
        assert main(argv) == 2
        line = _one_line(capsys.readouterr().err)
        assert "another configuration" in line and "inner.lr, task.shots" in line, line
    assert (cml_run / CHECKPOINT).read_bytes() == before


def test_steps_and_log_may_change_on_resume(cml_run):
    assert main(["train", "--out", str(cml_run), "--resume", "--steps", "30", "--quiet"]) == 0
    assert read_state(cml_run / CHECKPOINT)["state"]["step"] == 30
    assert main(["eval", str(cml_run), "--tasks", "4", "--quiet"]) == 0


def test_a_resume_without_a_checkpoint_is_refused_not_restarted(cml_run, capsys):
    (cml_run / CHECKPOINT).unlink()
    before = (cml_run / METRICS).read_bytes()
    assert main(["train", "--out", str(cml_run), "--resume", "--steps", "35", "--quiet"]) == 2
    assert "but no checkpoint.pt: refusing to restart" in _one_line(capsys.readouterr().err)
    assert (cml_run / METRICS).read_bytes() == before


def test_a_state_dict_mismatch_names_the_keys():
    from cmlearn.app.runs import load_error
    from cmlearn.core.models import MLP

    try:
        MLP(1, (4,), 1).load_state_dict(MLP(1, (4, 4), 1).state_dict())
    except RuntimeError as err:
        text = load_error(err)
    assert "\n" not in text and "Unexpected key(s)" in text and "body.fc2.weight" in text, text


# --- files outside the folder, folders that are not ours (§2) -------------------------------


def test_a_symlinked_lock_is_refused_and_its_target_untouched(cml_run, tmp_path, capsys):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (cml_run / ".lock").unlink()
    (cml_run / ".lock").symlink_to(victim)
    assert main(["train", "--out", str(cml_run), "--resume", "--quiet"]) == 2
    assert "symbolic link" in _one_line(capsys.readouterr().err)
    assert victim.read_text() == "precious\n"


def test_a_lock_that_is_not_a_regular_file_is_refused(tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    os.mkfifo(run / ".lock")
    with pytest.raises(CmlearnError, match="not a regular file"):
        with RunFolder(run).lock():
            pass


def test_the_pid_is_shown_to_a_process_that_comes_in_before_it_is_written(tmp_path):
    import fcntl
    import threading

    run = tmp_path / "r"
    run.mkdir()
    fd = os.open(run / ".lock", os.O_RDWR | os.O_CREAT)  # held, pid not yet written
    fcntl.flock(fd, fcntl.LOCK_EX)
    threading.Timer(0.2, lambda: os.pwrite(fd, b"4242\n", 0)).start()
    try:
        with pytest.raises(CmlearnError, match=r"\(pid 4242\)"):
            with RunFolder(run).lock():
                pass
    finally:
        os.close(fd)


def test_a_full_disk_at_start_is_one_line_and_leaves_no_lock(tmp_path, monkeypatch, capsys):
    def full(*args):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "pwrite", full)
    run = tmp_path / "new"
    assert main(["train", "--preset", "sinusoid-5shot-cpu", "--out", str(run), "--quiet"]) == 2
    assert "No space left on device" in _one_line(capsys.readouterr().err)
    assert not run.exists()  # neither the folder nor an empty .lock is left


def test_a_start_the_data_refuses_leaves_no_folder(tmp_path, monkeypatch, capsys):
    """Refused while building the data (too few examples per class, say): the folder goes,
    or an empty one it was given is left empty, and the same command then starts cleanly."""
    from cmlearn.app import train as training

    real = training.build_source

    def refuse(*args):
        raise CmlearnError("omniglot: 1 shots + 20 queries = 21 examples per class, but 20")

    monkeypatch.setattr(training, "build_source", refuse)
    new, given = tmp_path / "new", tmp_path / "given"
    given.mkdir()
    for run in (new, given):
        assert main(_train_argv(str(run))) == 2
        assert "21 examples per class" in _one_line(capsys.readouterr().err)
    assert not new.exists() and list(given.iterdir()) == []
    monkeypatch.setattr(training, "build_source", real)
    assert main(_train_argv(str(new))) == 0 and (new / CHECKPOINT).exists()


def _train_argv(out: str) -> list[str]:
    return ["train", "--preset", "sinusoid-5shot-cpu", "--steps", "2", "--quiet", "--out", out]


def _compare_argv(out: str) -> list[str]:
    return ["compare", "--preset", "sinusoid-5shot-cpu", "--methods", "maml", "--steps", "2",
            "--tasks", "4", "--quiet", "--out", out]  # fmt: skip


def test_compare_and_run_folders_refuse_each_other(cml_run, tmp_path, capsys):
    assert main(_compare_argv(str(cml_run))) == 2
    assert "is a train run folder" in _one_line(capsys.readouterr().err)
    assert not (cml_run / "maml-s0").exists() and not (cml_run / "compare.json").exists()
    cmp = tmp_path / "cmp"
    assert main(_compare_argv(str(cmp))) == 0
    capsys.readouterr()
    assert main(_train_argv(str(cmp))) == 2
    assert "is a compare folder" in _one_line(capsys.readouterr().err)
    assert main(_compare_argv(str(cmp))) == 0  # a compare folder is reused by compare


@pytest.mark.parametrize("command", ["train", "compare"])
def test_a_non_empty_foreign_folder_is_refused(command, tmp_path, capsys):
    (tmp_path / "thesis.tex").write_text("keep me")
    argv = _train_argv(str(tmp_path)) if command == "train" else _compare_argv(str(tmp_path))
    assert main(argv) == 2
    assert "is not empty and holds no cmlearn" in _one_line(capsys.readouterr().err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["thesis.tex"]


def test_a_file_as_out_is_named_a_file(tmp_path, capsys):
    (tmp_path / "f").write_text("keep me")
    for argv in (_train_argv(str(tmp_path / "f")), _compare_argv(str(tmp_path / "f"))):
        assert main(argv) == 2
        assert "is a file, not a folder" in _one_line(capsys.readouterr().err)
    assert (tmp_path / "f").read_text() == "keep me"


def test_an_empty_out_is_refused(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for argv in (_train_argv(""), _compare_argv("")):
        assert main(argv) == 2
        assert "--out: expected a folder name" in _one_line(capsys.readouterr().err)
    assert not list(tmp_path.iterdir())


def test_a_folder_killed_before_its_config_was_written_says_how_to_start_it(tmp_path, capsys):
    run = tmp_path / "r"
    run.mkdir()
    (run / ".lock").write_text("123\n")  # what a kill before config.json leaves
    assert main(["train", "--out", str(run), "--resume", "--quiet"]) == 2
    assert "start it again with cmlearn train --preset" in _one_line(capsys.readouterr().err)
    assert main(_train_argv(str(run))) == 0  # and starting it again works


def test_sigterm_while_the_run_loads_saves_a_resumable_folder(tmp_path):
    run = tmp_path / "r"
    proc = _spawn(*SLOW_RUN, "--out", str(run))
    _wait_for(lambda: run.exists())
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "terminated (SIGTERM)" in _one_line(err)
    assert main(["train", "--out", str(run), "--resume", "--steps", "2", "--quiet"]) == 0


# --- bounds and spellings (§3) --------------------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("task.shots=5.0", "expected an integer"),
        ("task.shots=1e1", "expected an integer"),
        ("train.patience=1e-400", "expected an integer"),
        ("task.context=٣", "expected an integer"),
        ("train.steps=１２", "expected an integer"),
        ("inner.first_order=1", "expected true or false"),
        ("inner.first_order=TRUE", "expected true or false"),
        ("train.threads=1e20", "expected an integer"),
        ("train.threads=100000", "train.threads must be in [0, 1024]"),
    ],
)
def test_integers_and_booleans_are_taken_only_as_written(setting, message, tmp_path, capsys):
    run = tmp_path / "r"
    assert main([*_train_argv(str(run)), "--set", setting]) == 2
    assert message in _one_line(capsys.readouterr().err)
    assert not run.exists()  # refused before the folder was made


@pytest.mark.parametrize("flag", [["--steps", "１２"], ["--seed", "٣"], ["--steps", "1_0"]])
def test_integer_flags_take_ascii_digits(flag, tmp_path, capsys):
    assert main([*_train_argv(str(tmp_path / "r")), *flag]) == 2
    assert "expected an integer written with the digits 0-9" in _one_line(capsys.readouterr().err)


def test_eval_tasks_is_bounded_and_a_file_is_not_a_missing_folder(cml_run, capsys):
    assert main(["eval", str(cml_run), "--tasks", "100000000"]) == 2
    assert "--tasks must be in [2, 1000000]" in _one_line(capsys.readouterr().err)
    assert main(["eval", str(cml_run / METRICS)]) == 2
    assert "is a file; eval takes a run folder" in _one_line(capsys.readouterr().err)
