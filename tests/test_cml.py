"""CML's defining properties and its controls."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.func import functional_call

from cmlearn.app.runs import MODEL, load_run
from cmlearn.app.train import train
from cmlearn.core.engine import expand, task_losses
from tests.conftest import make_learner, sinusoid_batch


def test_cml_with_gamma_zero_equals_maml_exactly(tiny_cfg, tmp_path):
    maml = train(tiny_cfg.override(["colearner.mode=none"]), tmp_path / "maml", progress=False)
    cml = train(
        tiny_cfg.override(["colearner.mode=cml", "colearner.gamma=0"]),
        tmp_path / "cml",
        progress=False,
    )
    a = torch.load(Path(maml["run"]) / MODEL)["model"]
    b = torch.load(Path(cml["run"]) / MODEL)["model"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    val = [json.loads(x) for x in (tmp_path / "maml" / "metrics.jsonl").read_text().splitlines()]
    val_cml = [json.loads(x) for x in (tmp_path / "cml" / "metrics.jsonl").read_text().splitlines()]
    assert [r.get("val_mse") for r in val] == [r.get("val_mse") for r in val_cml]


def test_inner_loop_never_adapts_the_colearner():
    """The co-term equals the co-learner with its *meta* parameters on adapted features."""
    learner = make_learner(mode="cml", steps=2)
    assert not any(k.startswith("colearner.") for k in learner.step_sizes)
    batch = sinusoid_batch()
    _, terms = learner.meta_objective(batch)
    # Rebuild by hand: adapt (ψ, θ) with MAML, then ϕ un-adapted on the adapted features.
    net = learner.net
    params = expand(dict(net.named_parameters()), batch.n_tasks)
    for _ in range(2):
        (out,) = functional_call(net, params, (batch.support_x,))
        loss = task_losses(out, batch.support_y, "mse").sum()
        keys = [k for k in params if not k.startswith("colearner.")]
        grads = torch.autograd.grad(loss, [params[k] for k in keys], create_graph=True)
        params = {**params, **{k: params[k] - 0.05 * g for k, g in zip(keys, grads, strict=True)}}
    feats = functional_call(
        net.model.body,
        {
            k.removeprefix("model.body."): v
            for k, v in params.items()
            if k.startswith("model.body.")
        },
        (batch.query_x,),
    )
    co_out = net.colearner(feats)  # the module's own, un-adapted ϕ
    torch.testing.assert_close(terms["co"], task_losses(co_out, batch.query_y, "mse"))


def test_colearner_term_reaches_the_body_and_is_gamma_scaled():
    batch = sinusoid_batch()
    grads = {}
    for gamma in (0.0, 0.5, 1.0):
        learner = make_learner(mode="cml", gamma=gamma)
        learner.meta_objective(batch)[0].backward()
        grads[gamma] = {k: p.grad.clone() for k, p in learner.net.named_parameters()}
    body = [k for k in grads[0.0] if k.startswith("model.body.")]
    for k in body:
        assert not torch.allclose(grads[0.5][k], grads[0.0][k]), k
        # the co-term's contribution is linear in γ
        torch.testing.assert_close(
            grads[1.0][k] - grads[0.0][k], 2 * (grads[0.5][k] - grads[0.0][k]), rtol=1e-4, atol=1e-6
        )
    co = [k for k in grads[0.0] if k.startswith("colearner.")]
    assert all(grads[0.0][k].abs().max() == 0 for k in co)
    assert all(grads[0.5][k].abs().max() > 0 for k in co)


def test_first_order_colearner_sends_nothing_to_the_head():
    """Paper §1.3: θ gets no co-learner gradient unless second order couples ψ' to θ."""
    batch = sinusoid_batch()
    heads = {}
    for gamma in (0.0, 1.0):
        learner = make_learner(algorithm="fomaml", mode="cml", gamma=gamma)
        learner.meta_objective(batch)[0].backward()
        heads[gamma] = [p.grad.clone() for p in learner.net.model.head.parameters()]
    for a, b in zip(heads[0.0], heads[1.0], strict=True):
        torch.testing.assert_close(a, b)


def test_random_colearner_is_never_updated_but_shapes_the_body(tiny_cfg, tmp_path):
    rnd = train(
        tiny_cfg.override(["colearner.mode=random", "colearner.gamma=1"]),
        tmp_path / "random",
        progress=False,
    )
    maml = train(tiny_cfg.override(["colearner.mode=none"]), tmp_path / "maml", progress=False)
    ckpt = torch.load(Path(rnd["run"]) / "checkpoint.pt")
    _, fresh = load_run(Path(rnd["run"]))  # rebuilt from the seed: the initial co-learner
    init_co = make_initial_colearner(tiny_cfg.override(["colearner.mode=random"]))
    for k, v in init_co.items():
        assert torch.equal(ckpt["net"][f"colearner.{k}"], v), k
    a = torch.load(Path(maml["run"]) / "checkpoint.pt")["net"]
    assert any(not torch.equal(a[k], ckpt["net"][k]) for k in a if k.startswith("model.body."))
    assert fresh.net.colearner is not None


def make_initial_colearner(cfg):
    from cmlearn.app.build import build_learner, build_source

    learner = build_learner(cfg, build_source(cfg))
    return {k: v.clone() for k, v in learner.net.colearner.state_dict().items()}


def test_cl_adapts_the_colearner():
    learner = make_learner(mode="cl", steps=1)
    co_keys = [k for k in learner.step_sizes if k.startswith("colearner.")]
    assert co_keys, "CL must give the co-learner inner step sizes"
    batch = sinusoid_batch()
    _, terms_cl = learner.meta_objective(batch)
    frozen = make_learner(mode="cml", steps=1)
    _, terms_cml = frozen.meta_objective(batch)
    # same init, same ψ'θ' path except the γ-weighted co-loss: the co-terms must differ
    assert not torch.allclose(terms_cl["co"], terms_cml["co"])


def test_saved_inference_model_is_exactly_maml(tiny_cfg, tmp_path):
    run = Path(
        train(tiny_cfg.override(["colearner.mode=cml"]), tmp_path / "cml", progress=False)["run"]
    )
    maml = Path(train(tiny_cfg, tmp_path / "maml", progress=False)["run"])
    cml_model = torch.load(run / MODEL)
    maml_model = torch.load(maml / MODEL)
    assert not any("colearner" in k for k in cml_model["model"])
    assert not any("colearner" in k for k in cml_model["step_sizes"])
    assert {k: v.shape for k, v in cml_model["model"].items()} == {
        k: v.shape for k, v in maml_model["model"].items()
    }
    assert (run / "colearner.pt").exists()
    assert torch.load(run / "colearner.pt")["step"] == cml_model["step"]


@pytest.mark.parametrize("mode", ["cml", "cml-dagger", "cml-dagger-code", "cml-dagger-unadapted"])
def test_evaluation_modes(mode):
    learner = make_learner(mode="cml")
    batch = sinusoid_batch()
    result = learner.evaluate(batch, mode, return_outputs=True)
    assert result["loss"].shape == (batch.n_tasks,)
    if mode == "cml":
        # the meta-learner alone: identical to a learner that has no co-learner at all
        plain = make_learner(mode="none")
        torch.testing.assert_close(result["loss"], plain.evaluate(batch, "cml")["loss"])


def test_cml_dagger_adapts_the_body_only_with_the_colearner_loss():
    learner = make_learner(mode="cml", lr=0.05)
    batch = sinusoid_batch()
    out = learner.evaluate(batch, "cml-dagger", return_outputs=True)["output"]
    net = learner.net
    body = {k: v.detach() for k, v in net.model.body.named_parameters()}
    manual = []
    for i in range(batch.n_tasks):
        p = {k: v.clone().requires_grad_() for k, v in body.items()}
        co_s = net.colearner(functional_call(net.model.body, p, (batch.support_x[i],)))
        loss = (co_s - batch.support_y[i]).square().mean()
        g = torch.autograd.grad(loss, list(p.values()))
        p = {k: v - 0.05 * gi for (k, v), gi in zip(p.items(), g, strict=True)}
        manual.append(net.colearner(functional_call(net.model.body, p, (batch.query_x[i],))))
    torch.testing.assert_close(out, torch.stack(manual).detach())
    code = learner.evaluate(batch, "cml-dagger-code", return_outputs=True)["output"]
    assert not torch.allclose(out, code)


def test_eval_mode_without_colearner_is_rejected():
    from cmlearn import CmlearnError

    with pytest.raises(CmlearnError, match="needs a co-learner"):
        make_learner(mode="none").evaluate(sinusoid_batch(), "cml-dagger")


def cl_scores() -> tuple[torch.Tensor, torch.Tensor]:
    """A CL run's CL† loss (ϕ adapted) and the same weights' CML† (ϕ as meta-learned)."""
    from cmlearn.core.cml import CoLearnerSpec

    learner = make_learner(mode="cl", gamma=1.0)
    batch = sinusoid_batch()
    adapted = learner.evaluate(batch, "cml-dagger-code")["loss"]
    learner.co = CoLearnerSpec("cml", 1.0)  # same parameters, ϕ left un-adapted
    learner.step_sizes = {k: v for k, v in learner.step_sizes.items() if "colearner" not in k}
    return adapted, learner.evaluate(batch, "cml-dagger-code")["loss"]


def test_cl_evaluation_adapts_the_colearner_as_in_training():
    """For a CL run, cml-dagger-code is CL† (adapted ϕ), not CL† without adaptation."""
    adapted, frozen = cl_scores()
    assert not torch.allclose(adapted, frozen)


def test_cl_dagger_unadapted_predicts_with_the_meta_learned_colearner():
    """Table 4's CL† w/o adaptation: the CL run's ψ, θ adapt with the meta-learner's loss and
    its ϕ is used as meta-learned: what the same weights give as a CML run's CML†; for CML
    itself the mode is CML†."""
    adapted, frozen = cl_scores()
    learner = make_learner(mode="cl", gamma=1.0)
    batch = sinusoid_batch()
    unadapted = learner.evaluate(batch, "cml-dagger-unadapted")["loss"]
    torch.testing.assert_close(unadapted, frozen)
    assert not torch.allclose(unadapted, adapted)
    cml = make_learner(mode="cml")
    torch.testing.assert_close(
        cml.evaluate(batch, "cml-dagger-unadapted")["loss"],
        cml.evaluate(batch, "cml-dagger-code")["loss"],
    )
