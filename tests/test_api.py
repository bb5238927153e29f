"""The public API: any nn.Module, the two idioms, tasks from the user's data, fit and the shell."""

from __future__ import annotations

import copy
import json
import textwrap

import pytest
import torch
from torch import Tensor, nn

import cmlearn
from cmlearn import CmlearnError


def images(classes: int = 15, per_class: int = 8, dtype: torch.dtype = torch.int32):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(classes * per_class, 1, 6, 6, generator=gen)
    return x, torch.arange(classes, dtype=dtype).repeat_interleave(per_class)


class Net(nn.Module):
    """A user's CNN: forward flattens between its children (not an nn.Sequential)."""

    def __init__(self, out_features: int = 3, bn: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.norm = nn.BatchNorm2d(4, track_running_stats=bn)
        self.fc = nn.Linear(4 * 16, out_features)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.relu(self.norm(self.conv(x))).flatten(1))


def tasks(**kw):
    return cmlearn.few_shot(*images(), ways=3, shots=2, queries=3, **kw)


def batch(source, step: int = 0, n: int = 4):
    return source.sample(n, cmlearn.generator("train", 0, step))


def grads(learner) -> dict[str, Tensor]:
    return {k: p.grad.clone() for k, p in learner.net.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("algorithm", ["maml", "metasgd"])
def test_the_batched_and_functional_idioms_give_identical_gradients(algorithm):
    source = tasks()
    torch.manual_seed(0)
    learner = cmlearn.meta_learner(Net(), source, algorithm=algorithm, colearner="cml")
    b = batch(source)
    loss, terms = learner.meta_loss(b)
    loss.backward()
    want = grads(learner) | {f"step_size.{k}": v.grad for k, v in learner.step_sizes.items()}
    want = {k: v for k, v in want.items() if v is not None}
    f, params, buffers = learner.functional()
    got = torch.func.grad(f)({k: v.detach() for k, v in params.items()}, buffers, b)
    assert set(got) == set(want)
    assert any(k.startswith("colearner.") for k in got)
    assert (algorithm == "metasgd") == any(k.startswith("step_size.") for k in got)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-6, atol=1e-7)
    assert terms["meta"].shape == terms["co"].shape == terms["accuracy"].shape == (4,)
    value = f({k: v.detach() for k, v in params.items()}, buffers, b)  # plain call: a value
    assert torch.equal(value.detach(), loss.detach())


def test_cml_with_gamma_zero_is_maml_exactly_through_the_public_api():
    source = tasks()
    torch.manual_seed(0)
    net = Net()
    maml = cmlearn.meta_learner(copy.deepcopy(net), source, colearner="none")
    cml = cmlearn.meta_learner(copy.deepcopy(net), source, colearner="cml", gamma=0.0)
    opts = [torch.optim.Adam(x.meta_parameters(), 1e-2) for x in (maml, cml)]
    for step in range(3):
        for learner, opt in zip((maml, cml), opts, strict=True):
            opt.zero_grad()
            learner.meta_loss(batch(source, step))[0].backward()
            opt.step()
    for (name, a), (_, b) in zip(
        maml.inference_model.named_parameters(), cml.inference_model.named_parameters(), strict=True
    ):
        assert torch.equal(a, b), name
    test = source.sample(5, cmlearn.generator("test", 1234, 0), "test")
    assert torch.equal(maml.evaluate(test, "maml")["loss"], cml.evaluate(test, "cml")["loss"])
    assert cml.net.colearner is not None and maml.net.colearner is None


def test_a_plain_module_and_a_sequential_are_split_and_probed():
    source = tasks()
    torch.manual_seed(0)
    mine = Net()
    learner = cmlearn.meta_learner(mine, source, colearner="cml")
    assert learner.strategy == "loop"  # auto, resolved and reported
    assert learner.net.colearner.fc1.weight.shape[-1] == 64  # probed: the head's input
    assert isinstance(learner.net.model.body.net.fc, nn.Identity)
    assert isinstance(mine.fc, nn.Linear)  # the user's module is untouched
    x = source.sample(1, cmlearn.generator("val", 0), "val").support_x[0]
    mine.eval(), learner.inference_model.eval()
    assert torch.equal(learner.inference_model(x), mine(x))  # the split is the module
    seq = nn.Sequential(nn.Flatten(), nn.Linear(36, 16), nn.ReLU(), nn.Linear(16, 3))
    learner = cmlearn.meta_learner(seq, source, colearner="cml", point="2")
    assert learner.net.colearner.fc1.weight.shape[-1] == 16
    assert isinstance(seq[3], nn.Linear) and len(seq) == 4  # the user's module is untouched
    result = learner.evaluate(batch(source), "maml", return_outputs=True)
    assert result["loss"].shape == result["accuracy"].shape == (4,)
    assert result["output"].shape == (4, 9, 3)


def test_a_plain_module_given_to_the_internal_pairing_says_how_to_split_it():
    from cmlearn.core.models import Cooperative

    with pytest.raises(ValueError, match="not split into body and head: wrap it with"):
        Cooperative(Net())


def test_a_head_that_is_not_last_in_forward_is_one_line():
    class After(Net):
        def forward(self, x: Tensor) -> Tensor:
            return super().forward(x) * 2

    with pytest.raises(CmlearnError, match="does not end with its head 'fc'"):
        cmlearn.meta_learner(After(), tasks())
    with pytest.raises(CmlearnError, match="no submodule 'nope'.*conv, norm, fc"):
        cmlearn.meta_learner(Net(), tasks(), head="nope")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"algorithm": "mamll"}, "unknown algorithm 'mamll'; choose from maml, fomaml"),
        ({"colearner": "cmll"}, "unknown co-learner 'cmll'; choose from none, cml, random, cl"),
        ({"strategy": "loops"}, "unknown strategy 'loops'; choose from auto, batched"),
        ({"colearner": "cml", "colearner_head": "mpl"}, "unknown co-learner head 'mpl'"),
        ({"colearner": "cml", "colearner_options": {"depth": 2}}, "no option 'depth'"),
        ({"stepz": 2}, "the inner loop has no option 'stepz'; known: steps, lr"),
        ({"strategy": "batched"}, "strategy 'batched' .* needs a model whose every layer"),
        ({"loss": "l1"}, "unknown loss 'l1'"),
        ({"rho_up": 0.1}, "outer SAM radius"),
        ({"gamma": -1.0}, "gamma must be a finite non-negative number"),
    ],
)
def test_unknown_names_and_values_are_one_line_listing_the_choices(kwargs, message):
    with pytest.raises(CmlearnError, match=message) as err:
        cmlearn.meta_learner(Net(), tasks(), **kwargs)
    assert "\n" not in str(err.value)


def test_fit_refuses_unknown_settings_and_unimportable_parts_in_one_line(tmp_path):
    with pytest.raises(CmlearnError, match="unexpected keyword argument 'stepz'; settings: algo"):
        cmlearn.fit("a_h18:Net", "a_h18:data", tmp_path, stepz=3)
    with pytest.raises(CmlearnError, match="cannot import no_such_h18:data: No module named"):
        cmlearn.fit("no_such_h18:Net", "no_such_h18:data", tmp_path, steps=1)
    with pytest.raises(CmlearnError, match="is not an import path"):
        cmlearn.fit("a_h18:Net", "data:not a name", tmp_path)
    with pytest.raises(CmlearnError, match="no import path"):
        cmlearn.fit(lambda: Net(), "data:x", tmp_path)


def test_vmap_with_running_batchnorm_and_an_unknown_mode_are_one_line():
    with pytest.raises(CmlearnError, match="running statistics need strategy 'loop'"):
        cmlearn.meta_learner(Net(bn=True), tasks(), strategy="vmap")
    learner = cmlearn.meta_learner(Net(), tasks())
    with pytest.raises(CmlearnError, match="unknown evaluation mode 'mamll'"):
        learner.evaluate(batch(tasks()), "mamll")
    with pytest.raises(CmlearnError, match="needs a co-learner"):
        learner.evaluate(batch(tasks()), "cml-dagger-code")


@pytest.mark.parametrize("dtype", [torch.int16, torch.int32, torch.int64, torch.uint8])
def test_labels_of_any_integer_dtype_work(dtype):
    source = cmlearn.few_shot(*images(dtype=dtype), ways=3, shots=2, queries=3)
    learner = cmlearn.meta_learner(Net(), source)
    b = batch(source)
    own = type(b)(b.support_x, b.support_y.to(dtype), b.query_x, b.query_y.to(dtype))
    assert torch.equal(learner.meta_loss(own)[0], learner.meta_loss(b)[0])
    with pytest.raises(CmlearnError, match="labels must be integers"):
        cmlearn.few_shot(images()[0], images()[1].float())
    # a batch the user builds: float labels and labels past the ways are one line, not a loss
    floats = type(b)(b.support_x, b.support_y.float() + 0.7, b.query_x, b.query_y.float() + 0.7)
    with pytest.raises(CmlearnError, match="labels must be integers, not torch.float32"):
        learner.meta_loss(floats)
    with pytest.raises(CmlearnError, match="labels must be integers"):
        learner.evaluate(floats, "maml")
    past = type(b)(b.support_x, b.support_y + 3, b.query_x, b.query_y)
    with pytest.raises(CmlearnError, match=r"class indices in \[0, 3\)"):
        learner.meta_loss(past)


def test_the_user_sampler_gives_the_same_tasks_for_the_same_seed_and_disjoint_splits():
    a, b = tasks(), tasks()
    for split in ("train", "val", "test"):
        x = a.sample(6, cmlearn.generator(split, 3, 1), split)
        y = b.sample(6, cmlearn.generator(split, 3, 1), split)
        assert torch.equal(x.support_x, y.support_x) and torch.equal(x.query_x, y.query_x)
    other = a.sample(6, cmlearn.generator("train", 4, 1))
    assert not torch.equal(other.support_x, a.sample(6, cmlearn.generator("train", 3, 1)).support_x)
    splits = a.dataset.splits
    ids = [set(splits[s].classes.tolist()) for s in ("train", "val", "test")]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    assert sum(map(len, ids)) == 15
    named = cmlearn.few_shot(
        *images(), ways=2, queries=3, splits={"train": [0, 1, 2], "val": [3, 4], "test": [5, 6]}
    )
    assert named.dataset.pool.names[named.dataset.splits["val"].classes[0]] == "3"
    ds = torch.utils.data.TensorDataset(*images())
    c = cmlearn.few_shot(ds, ways=3, shots=2, queries=3)
    assert torch.equal(
        c.sample(2, cmlearn.generator("train", 0, 0)).query_x, batch(a, 0, 2).query_x
    )


def lines(n_tasks: int, n_points: int, gen: torch.Generator):
    slope = torch.rand(n_tasks, 1, 1, generator=gen) * 4 - 2
    x = torch.rand(n_tasks, n_points, 1, generator=gen) * 10 - 5
    return x, slope * x


def test_a_regression_family_given_as_a_function_is_seeded_and_checked():
    source = cmlearn.regression(lines, shots=4, queries=6)
    a = source.sample(3, cmlearn.generator("train", 0, 2))
    b = source.sample(3, cmlearn.generator("train", 0, 2))
    assert torch.equal(a.support_y, b.support_y) and a.query_x.shape == (3, 6, 1)
    seq = nn.Sequential(nn.Linear(1, 16), nn.ReLU(), nn.Linear(16, 1))
    learner = cmlearn.meta_learner(seq, source, colearner="cml")
    assert learner.loss == "mse" and torch.isfinite(learner.meta_loss(a)[0])
    bad = cmlearn.regression(lambda n, m, gen: (torch.zeros(n, m), torch.zeros(n, m)))
    with pytest.raises(CmlearnError, match="expected"):
        bad.sample(2, cmlearn.generator("train", 0))


USER_MODULE = textwrap.dedent(
    """
    import torch
    from torch import nn
    import cmlearn

    class Net(nn.Module):
        def __init__(self, out_features: int = 3, width: int = 4):
            super().__init__()
            self.conv = nn.Conv2d(1, width, 3)
            self.fc = nn.Linear(width * 16, out_features)

        def forward(self, x):
            return self.fc(torch.relu(self.conv(x)).flatten(1))

    def data(classes: int = 15):
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(classes * 8, 1, 6, 6, generator=gen)
        return x, torch.arange(classes, dtype=torch.int32).repeat_interleave(8)

    def lines(n_tasks, n_points, gen):
        slope = torch.rand(n_tasks, 1, 1, generator=gen)
        x = torch.rand(n_tasks, n_points, 1, generator=gen)
        return x, slope * x

    def line_tasks():
        return cmlearn.regression(lines, shots=3, queries=4)

    def mlp(hidden: int = 8):
        return nn.Sequential(nn.Linear(1, hidden), nn.ReLU(), nn.Linear(hidden, 1))
    """
)


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "usermod_h18.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "usermod_h18"


def test_fit_writes_the_cli_run_folder_without_a_colearner_in_the_model(user_module, tmp_path):
    out = tmp_path / "run"
    summary = cmlearn.fit(
        f"{user_module}:Net",
        f"{user_module}:data",
        out,
        colearner="cml",
        ways=3,
        shots=2,
        queries=3,
        eval_queries=3,
        steps=4,
        val_every=2,
        val_tasks=4,
        test_tasks=4,
        progress=False,
        device="cpu",
    )
    assert summary["steps"] == 4 and summary["best_step"] in (2, 4)
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.pt", "colearner.pt", "checkpoint.pt", "metrics.jsonl"} <= names
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model"]["name"] == f"{user_module}:Net" and cfg["data"]["name"].endswith(":data")
    saved = torch.load(out / "model.pt", weights_only=True)
    assert not any("colearner" in k for k in saved["model"])
    learner = cmlearn.load(out)
    assert learner.net.colearner is not None
    assert not any("colearner" in k for k, _ in learner.inference_model.named_parameters())
    scores = cmlearn.task_scores(learner, learner_tasks(user_module), 4)
    assert scores.shape == (4,)
    again = cmlearn.fit(
        f"{user_module}:Net",
        f"{user_module}:data",
        out,
        resume=True,
        progress=False,
        device="cpu",
        steps=6,
        colearner="cml",
        ways=3,
        shots=2,
        queries=3,
        eval_queries=3,
        val_every=2,
        val_tasks=4,
        test_tasks=4,
    )
    assert again["steps"] == 6
    straight = tmp_path / "straight"
    cmlearn.fit(f"{user_module}:Net", f"{user_module}:data", straight, progress=False,
                device="cpu", steps=6, colearner="cml", ways=3, shots=2, queries=3,
                eval_queries=3, val_every=2, val_tasks=4, test_tasks=4)  # fmt: skip
    resumed, whole = (torch.load(d / "checkpoint.pt", weights_only=True) for d in (out, straight))
    for key, value in whole["net"].items():  # exact resume: the same weights bit for bit
        assert torch.equal(resumed["net"][key], value), key


def test_fit_takes_a_whole_task_source_the_user_built(user_module, tmp_path):
    summary = cmlearn.fit(
        f"{user_module}:mlp", f"{user_module}:line_tasks", tmp_path / "lines", colearner="cml",
        steps=2, val_every=1, val_tasks=3, test_tasks=3, progress=False, device="cpu",
    )  # fmt: skip
    assert summary["steps"] == 2 and summary["best_val_mse"] is not None
    learner = cmlearn.load(tmp_path / "lines")
    assert learner.loss == "mse" and learner.strategy == "loop"


def learner_tasks(module: str):
    import importlib

    x, y = importlib.import_module(module).data()
    return cmlearn.few_shot(x, y, ways=3, shots=2, queries=3)


def test_the_shell_trains_and_evaluates_parts_named_by_import_path(user_module, tmp_path, capsys):
    from cmlearn.app.cli import main

    out = tmp_path / "shell"
    args = ["train", "--model", f"{user_module}:Net", "--data", f"{user_module}:data"]
    args += ["--steps", "2", "--out", str(out), "--quiet", "--set", "task.ways=3"]
    for key in ("task.eval_queries=3", "train.val_tasks=4", "task.shots=1", "task.queries=3"):
        args += ["--set", key]
    args += ["--set", "model.options.width=2"]
    assert main(args) == 0
    assert main(["eval", str(out), "--tasks", "4", "--mode", "maml"]) == 0
    assert "[maml]: test accuracy" in capsys.readouterr().out
    # the shell's defaults are fit's (15 test queries per class, not the sinusoid's 100)
    from cmlearn.app.runs import read_config

    shell = read_config(out).to_dict()
    own = cmlearn.experiment(f"{user_module}:Net", f"{user_module}:data", steps=2).to_dict()
    assert shell["task"]["eval_queries"] == 3 and own["task"]["eval_queries"] == 15
    for section in ("train", "eval", "inner"):
        differ = {k for k in own[section] if own[section][k] != shell[section][k]}
        assert differ <= {"val_tasks", "log"}, (section, differ)
    assert main(["train", "--data", "nosuch_h18_mod:data", "--steps", "1"]) != 0
    err = capsys.readouterr().err.strip()
    assert err.startswith("cmlearn:") and "cannot import nosuch_h18_mod:data" in err
    assert "\n" not in err
