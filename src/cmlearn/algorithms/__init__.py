"""Inner-loop rules. Each algorithm is a few overrides of the shared ``InnerRule``."""

from __future__ import annotations

from dataclasses import replace

from cmlearn.algorithms.rule import InnerRule, adapt, group_of

ALGORITHMS: dict[str, dict] = {
    # Finn et al. 2017: every parameter steps, second order.
    "maml": {},
    # First-order MAML: the meta-gradient is the query gradient at the adapted parameters.
    "fomaml": {"first_order": True},
    # Raghu et al. 2020: only the head adapts.
    "anil": {"body_scale": 0.0, "head_scale": 1.0},
    # Oh et al. 2021: only the body adapts.
    "boil": {"body_scale": 1.0, "head_scale": 0.0},
    # Li et al. 2017: a learned step size per parameter element.
    "metasgd": {"learn_lr": "element"},
    # Antoniou et al. 2019: learned per-layer per-step step sizes, multi-step loss annealed
    # over the first 10% of training, first order for the first 30%, BatchNorm γ/β outer-loop
    # only, one row of γ/β per inner step (BNWB) in models that have BatchNorm.
    "mamlpp": {
        "learn_lr": "layer-step",
        "multi_step_loss": True,
        "msl_anneal": 0.1,
        "first_order_until": 0.3,
        "adapt_bn": False,
        "per_step_bn": True,
    },
}


OWNED = sorted({key for overrides in ALGORITHMS.values() for key in overrides})


def algorithm_rule(name: str, base: InnerRule) -> InnerRule:
    """``base`` (steps, α, …) with the overrides that define algorithm ``name``.

    Every field some algorithm overrides is first reset to its default, so switching from
    ``mamlpp`` to ``maml`` does not keep MAML++'s learned step sizes or loss schedule.
    """
    if name not in ALGORITHMS:
        raise KeyError(f"unknown algorithm {name!r}; choose from {', '.join(ALGORITHMS)}")
    defaults = InnerRule()
    reset = {key: getattr(defaults, key) for key in OWNED}
    return replace(base, **(reset | ALGORITHMS[name]))


__all__ = ["ALGORITHMS", "InnerRule", "adapt", "algorithm_rule", "group_of"]
