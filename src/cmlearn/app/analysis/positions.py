"""Where the outer loss's gradient enters the body's output map, position by position.

The meta-learner's head and the co-learner read the same adapted body output ``F(ψ'; x_q)``
on the query set, but not necessarily all of it: at 28 px Conv-4's last map is 3×3 and the
head's 2×2 max-pool reads only its top-left 2×2, so the meta-loss sends no gradient to the
other five positions, while a Conv(k)+FC co-learner reads all nine. This measures, for each
term of the meta-objective (``meta``: L^m, ``co``: γ·L^c), the share of its squared gradient
``‖∂term/∂F‖²`` at each spatial position (summed over tasks, query examples and channels), on
training-distribution tasks with the run's best parameters. A share map sums to 1; a position
with share 0 gets no gradient from that term, whatever the run learned.
"""

from __future__ import annotations

import torch
from torch import Tensor

from cmlearn.core.engine import Learner
from cmlearn.core.tasks import TaskBatch


def position_shares(learner: Learner, batches: list[TaskBatch]) -> dict:
    """``{"meta": [[share]], "co": [[share]] | None, "co_share_where_meta_is_zero": float |
    None, "shape": [H, W], "tasks": n}``, or ``{"skipped": why}`` when the body's output is
    not a spatial map."""
    layers = dict(learner.net.model.body.named_children())  # run one by one, not as a whole
    body = layers[learner.net.point]  # the map the co-learner reads (default: the last)
    energy: dict[str, Tensor] = {}
    tasks = 0
    for batch in batches:
        query = batch.query_x.shape[1]
        seen: list[Tensor] = []
        hook = body.register_forward_hook(lambda _m, _i, out, seen=seen: seen.append(out))
        try:
            _, terms = learner.meta_objective(batch)
        finally:
            hook.remove()
        maps = seen[-batch.n_tasks :]  # the query passes come last, one per task (the loop)
        if len(seen) < 2 * batch.n_tasks or any(f.dim() != 4 or len(f) != query for f in maps):
            return {"skipped": "needs the per-task loop and a spatial body output"}
        named = {"meta": terms["meta"].sum()}
        if learner.co.active:
            named["co"] = learner.co.gamma * terms["co"].sum()
        for i, (name, term) in enumerate(named.items()):
            grads = torch.autograd.grad(term, maps, retain_graph=i + 1 < len(named))
            per = sum(g.detach().double().pow(2).sum(dim=(0, 1)) for g in grads)
            energy[name] = energy[name] + per if name in energy else per
        tasks += batch.n_tasks
    shares = {k: v / v.sum() if v.sum() > 0 else None for k, v in energy.items()}
    meta, co = shares["meta"], shares.get("co")
    # the co-term's share where the meta-term sends nothing at all (exact zeros: unread)
    unread = None if meta is None or co is None else float(co[meta == 0].sum())
    return {
        "meta": None if meta is None else meta.tolist(),
        "co": None if co is None else co.tolist(),
        "co_share_where_meta_is_zero": unread,
        "shape": list(energy["meta"].shape),
        "tasks": tasks,
    }
