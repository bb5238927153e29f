"""The functional form inside your own loop: ``torch.func.grad`` of CML's meta-loss.

No run folder and no cmlearn training loop: ``learner.functional()`` gives the meta-loss as
a pure function ``f(params, buffers, batch)``; this script differentiates it with
``torch.func.grad``, steps the parameters with a hand-written Adam, and scores the result
with ``learner.evaluate`` on seeded test tasks. ``--tiny`` for a smoke run.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn
from torch.func import grad

import cmlearn


def blobs(classes: int = 30, per_class: int = 30, dim: int = 16, seed: int = 0):
    """Labelled vectors: each class a Gaussian blob around its own random centre."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=gen) * 2
    x = centres.repeat_interleave(per_class, 0) + torch.randn(
        classes * per_class, dim, generator=gen
    )
    return x, torch.arange(classes, dtype=torch.int16).repeat_interleave(per_class)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="a seconds-long smoke run")
    args = parser.parse_args()
    steps, n_test = (3, 10) if args.tiny else (500, 200)

    torch.manual_seed(0)
    x, y = blobs()
    tasks = cmlearn.few_shot(x, y, ways=5, shots=1, queries=5)
    net = nn.Sequential(
        nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 5)
    )
    learner = cmlearn.meta_learner(net, tasks, colearner="cml", gamma=0.5, steps=1, lr=0.1)
    f, params, buffers = learner.functional()
    params = {k: v.detach().clone() for k, v in params.items()}  # our own copies
    meta_grad = grad(f)  # d loss / d params, all in torch.func

    m = {k: torch.zeros_like(v) for k, v in params.items()}
    v2 = {k: torch.zeros_like(v) for k, v in params.items()}
    lr, b1, b2 = 1e-3, 0.9, 0.999
    for step in range(steps):
        batch = tasks.sample(8, cmlearn.generator("train", 0, step))
        g = meta_grad(params, buffers, batch)
        for k in params:  # Adam, by hand
            m[k] = b1 * m[k] + (1 - b1) * g[k]
            v2[k] = b2 * v2[k] + (1 - b2) * g[k] ** 2
            m_hat, v_hat = m[k] / (1 - b1 ** (step + 1)), v2[k] / (1 - b2 ** (step + 1))
            params[k] = params[k] - lr * m_hat / (v_hat.sqrt() + 1e-8)
        if step % max(steps // 5, 1) == 0:
            print(f"step {step}: meta-loss {f(params, buffers, batch).item():.4f}")

    with torch.no_grad():  # our parameters back into the learner, to evaluate them
        for name, p in learner.net.named_parameters():
            p.copy_(params[name])
    test = tasks.sample(n_test, cmlearn.generator("test", 1234, 0), "test")
    for mode in ("maml", "cml-dagger-code"):
        acc = learner.evaluate(test, mode)["accuracy"]
        print(f"{mode}: test accuracy {acc.mean():.3f} over {n_test} tasks")


if __name__ == "__main__":
    main()
