"""What the meta-learner's and the co-learner's terms each send into the body (paper Fig. 3)."""

from __future__ import annotations

import torch
from torch import Tensor

from cmlearn.algorithms.rule import group_of


def gradient_split(
    params: dict[str, Tensor], meta_loss: Tensor, co_loss: Tensor
) -> dict[str, dict[str, float]]:
    """Per body layer: norms of the two gradients and their cosine similarity.

    ``meta_loss`` and ``co_loss`` are the two outer terms (the co-term already scaled by γ),
    both still attached to the graph; the graph is kept for the training backward pass.
    Parameters of a layer (weight and bias) are concatenated into one vector.
    """
    names = [k for k, p in params.items() if group_of(k) == "body" and p.requires_grad]
    leaves = [params[k] for k in names]
    g_meta = torch.autograd.grad(meta_loss, leaves, retain_graph=True, allow_unused=True)
    g_co = torch.autograd.grad(co_loss, leaves, retain_graph=True, allow_unused=True)
    layers: dict[str, tuple[list[Tensor], list[Tensor]]] = {}
    for name, leaf, gm, gc in zip(names, leaves, g_meta, g_co, strict=True):
        layer = name.removeprefix("model.body.").rsplit(".", 1)[0]
        m, c = layers.setdefault(layer, ([], []))
        m.append((torch.zeros_like(leaf) if gm is None else gm).flatten())
        c.append((torch.zeros_like(leaf) if gc is None else gc).flatten())
    out = {}
    for layer, (m, c) in layers.items():
        vm, vc = torch.cat(m), torch.cat(c)
        cos = torch.nn.functional.cosine_similarity(vm, vc, dim=0, eps=1e-12)
        out[layer] = {
            "meta_norm": vm.norm().item(),
            "co_norm": vc.norm().item(),
            "cosine": cos.item(),
        }
    return out
