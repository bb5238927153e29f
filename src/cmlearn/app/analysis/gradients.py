"""What the meta-learner's and the co-learner's terms each send into the body (paper Fig. 3b, 3c).

Logged during training (``train.analysis_every``); ``cmlearn.app.analysis.records`` reads them back.
"""

from __future__ import annotations

import torch
from torch import Tensor

from cmlearn.core.algorithms.rule import group_of


def body_gradients(params: dict[str, Tensor], loss: Tensor) -> dict[str, Tensor]:
    """Gradient of ``loss`` for every trainable body parameter (zeros where unused); the graph
    is kept for the training backward pass."""
    names = [k for k, p in params.items() if group_of(k) == "body" and p.requires_grad]
    leaves = [params[k] for k in names]
    grads = torch.autograd.grad(loss, leaves, retain_graph=True, allow_unused=True)
    return {
        k: (torch.zeros_like(p) if g is None else g)
        for k, p, g in zip(names, leaves, grads, strict=True)
    }


def split_stats(
    meta: dict[str, Tensor], co: dict[str, Tensor] | None
) -> dict[str, dict[str, float | None]]:
    """Per body layer: norms of the two gradients and their cosine similarity. A layer's
    parameters (weight and bias) are concatenated into one vector. Without a co-learner term
    (``co`` is None: plain MAML, for the paper's Fig. 3c) only the meta norm is known."""
    layers: dict[str, tuple[list[Tensor], list[Tensor]]] = {}
    for name in meta:
        layer = name.removeprefix("model.body.").rsplit(".", 1)[0]
        m, c = layers.setdefault(layer, ([], []))
        m.append(meta[name].flatten())
        if co is not None:
            c.append(co[name].flatten())
    out: dict[str, dict[str, float | None]] = {}
    for layer, (m, c) in layers.items():
        vm = torch.cat(m)
        if co is None:
            out[layer] = {"meta_norm": vm.norm().item(), "co_norm": None, "cosine": None}
            continue
        vc = torch.cat(c)
        cos = torch.nn.functional.cosine_similarity(vm, vc, dim=0, eps=1e-12)
        out[layer] = {
            "meta_norm": vm.norm().item(),
            "co_norm": vc.norm().item(),
            "cosine": cos.item(),
        }
    return out


def gradient_split(
    params: dict[str, Tensor], meta_loss: Tensor, co_loss: Tensor
) -> dict[str, dict[str, float]]:
    """Per body layer statistics of the two outer terms (the co-term already scaled by γ)."""
    return split_stats(body_gradients(params, meta_loss), body_gradients(params, co_loss))
