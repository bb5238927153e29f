"""G-Meta's meta-step on Amazon-Computer: ours against the original scripts' way of computing it.

The reference does what TLP's G-Meta code does on its GPU: a dense N×N Â is held in memory,
and at every inner step each support node's 2-hop subgraph is found and sliced out of it
again (Â[S, S] and X[S] as dense matrices), then a dense two-layer GCN runs on the slice and
its rows are averaged. Ours is the engine's first-order meta-step of the ``gmeta`` model
(plans built from the sparse Â once per task, CSR products; ``cmlearn.core.models.graph``), with
its plan and subgraph caches emptied before every timed step, as for a task whose nodes were
never seen.

Both run the same network from the same parameters on the same task with dropout off, so they
must give the same meta-loss (checked to 1e-5 before timing). ``graph_gmeta_speedup`` is the
median reference step time over the median of ours, interleaved repeat by repeat; the memory
figure is each side's peak resident memory growth during one meta-step in a fresh process
(from the graph and the model loaded; the reference's dense Â counts, as its scripts hold one,
and so do our plans).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from cmlearn.app.bench.leaks import fresh_json, status_kib
from cmlearn.core.errors import CmlearnError

PRESET = "amazon-2w5s-gmeta"
GOALS = {"graph_gmeta_speedup": (">=", 10.0), "graph_gmeta_memory_ratio": ("<=", 0.2)}


def setup(seed: int = 0):
    """The preset's source, a G-Meta learner with dropout off and one training task."""
    from cmlearn.app.build import build_learner, build_source
    from cmlearn.app.config import get_preset
    from cmlearn.core.tasks import generator

    cfg = get_preset(PRESET).apply([("model.options.dropout", 0.0)])
    source = build_source(cfg)
    learner = build_learner(cfg, source)
    batch = source.sample(1, generator("train", seed, 0))
    return cfg, source, learner, batch


def ours(learner, batch) -> Callable[[], Tensor]:
    encoder = learner.net.model.body.gcn

    def objective() -> Tensor:
        encoder.clear_cache()
        return learner.meta_objective(batch)[0]

    return objective


def reference(cfg, source, learner, batch) -> Callable[[], Tensor]:
    """First-order MAML over dense subgraphs re-extracted at every inner step."""
    graph = source.graph
    a = graph.adjacency.to_dense()  # N×N, as the original scripts keep it
    x = graph.features.to_dense()
    params = {k: v for k, v in learner.net.model.named_parameters()}
    names = ["body.gcn.lin1.weight", "body.gcn.lin1.bias", "body.gcn.lin2.weight",
             "body.gcn.lin2.bias", "head.weight", "head.bias"]  # fmt: skip
    steps, lr = cfg.inner.steps, cfg.inner.lr

    def embed(p: list[Tensor], nodes: Tensor) -> Tensor:
        w1, b1, w2, b2, w, b = p
        out = []
        for v in nodes.tolist():
            ring = a[v].nonzero().squeeze(1)
            ball = (a[ring].sum(0) > 0).nonzero().squeeze(1)
            sub = a[ball][:, ball]
            h = sub @ torch.relu(sub @ x[ball] @ w1.T + b1) @ w2.T + b2
            out.append(h.mean(0))
        return torch.stack(out) @ w.T + b

    def objective() -> Tensor:
        meta = [params[k] for k in names]
        fast = [t.detach().requires_grad_() for t in meta]
        for _ in range(steps):
            loss = F.cross_entropy(embed(fast, batch.support_x[0]), batch.support_y[0])
            grads = torch.autograd.grad(loss, fast)
            fast = [
                (t - lr * g).detach().requires_grad_() for t, g in zip(fast, grads, strict=True)
            ]
        # first order: the query gradient at the adapted weights is the meta-gradient
        adapted = [m + (f - m).detach() for m, f in zip(meta, fast, strict=True)]
        return F.cross_entropy(embed(adapted, batch.query_x[0]), batch.query_y[0])

    return objective


def step(objective: Callable[[], Tensor], learner) -> Callable[[], None]:
    def run() -> None:
        objective().backward()
        learner.net.zero_grad(set_to_none=True)

    return run


def speedup(repeats: int = 3, log: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """Median seconds per meta-step of both, their ratio and the loss check."""
    torch.set_num_threads(1)
    cfg, source, learner, batch = setup()
    learner.net.eval()  # dropout off in both (the reference has none)
    mine, ref = ours(learner, batch), reference(cfg, source, learner, batch)
    a, b = mine().item(), ref().item()
    if abs(a - b) > 1e-5 * max(1.0, abs(b)):
        raise CmlearnError(f"G-Meta meta-losses differ: ours {a:.7f}, reference {b:.7f}")
    times: dict[str, list[float]] = {"ours": [], "reference": []}
    for r in range(repeats):
        for name, objective in (("ours", mine), ("reference", ref)):
            run = step(objective, learner)
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
        log(f"graph repeat {r + 1}/{repeats}: ours {times['ours'][-1]:.2f} s, "
            f"reference {times['reference'][-1]:.2f} s")  # fmt: skip
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "ours_s": med["ours"],
        "reference_s": med["reference"],
        "graph_gmeta_speedup": med["reference"] / med["ours"],
        "loss_ours": a,
        "loss_reference": b,
        "seconds": times,
    }


def peak_growth_mib(which: str) -> float:
    """Peak resident memory growth of one meta-step of ``which`` in a fresh process."""
    args = ["-m", "cmlearn.app.bench.graph", "--worker", which]
    return fresh_json(args, "graph memory worker", timeout=1800)["growth_mib"]


def _worker(which: str) -> None:
    """Peak resident growth of one meta-step: the kernel's high-water mark is reset once the
    graph is loaded (``clear_refs`` 5), so loading's own peak does not hide the step's."""
    torch.set_num_threads(1)
    cfg, source, learner, batch = setup()
    learner.net.eval()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = status_kib("VmRSS")
    if which == "ours":
        objective = ours(learner, batch)
    else:
        objective = reference(cfg, source, learner, batch)
    step(objective, learner)()
    print(json.dumps({"growth_mib": (status_kib("VmHWM") - before) / 1024}))


def bench(repeats: int = 3, log: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """Both figures, or ``{"status": "skipped", "note": …}`` without Amazon-Computer."""
    try:
        result = speedup(repeats, log)
        log("graph memory: one meta-step each in a fresh process")
        mem = {k: peak_growth_mib(k) for k in ("ours", "reference")}
    except CmlearnError as err:
        return {"status": "skipped", "note": f"graph benchmark skipped: {err}"}
    result["memory_mib"] = mem
    result["graph_gmeta_memory_ratio"] = (
        mem["ours"] / mem["reference"] if mem["reference"] > 0 else None
    )
    return {"status": "ok", **result}


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", choices=("ours", "reference"))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.worker:
        _worker(args.worker)
    else:
        print(json.dumps(bench(args.repeats, log=print), indent=1))
