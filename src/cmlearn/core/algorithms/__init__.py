"""Inner-loop rules. Each algorithm is a few overrides of the shared ``InnerRule``."""

from __future__ import annotations

from dataclasses import replace

from cmlearn.core.algorithms.rule import InnerRule, Stage, adapt, group_of

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
    # Antoniou et al., "How to train your MAML", ICLR 2019, and its released code
    # (github.com/AntreasAntoniou/HowToTrainYourMAMLPytorch):
    # - LSLR: one learned step size per adapted tensor per inner step, all starting
    #   at inner.lr, unclipped (they may turn negative, as in the released code);
    # - MSL: the released code's per-step loss weights for the first msl_epochs
    #   epochs of train.epoch_steps iterations (10 for Omniglot, experiment_config/; the
    #   miniImageNet presets set 15), the last step's loss alone after;
    # - DA: first order for the first half of training, second order after (the
    #   paper's 50 of 100 epochs; the released configs never switch, first_order_until=0);
    # - BatchNorm γ/β outer-loop only (enable_inner_loop_optimizable_bn_params=false),
    #   one row per inner step (BNWB) in models that have BatchNorm; statistics stay
    #   transductive as in the released code (BNRS, per-step running statistics, is a model
    #   option).
    # Outside the inner rule: cosine meta-lr (CA: train.lr_schedule, train.min_lr), the
    # ±10 gradient clamp (train.grad_clamp), the top-k logit ensemble at test
    # (eval.ensemble); evaluation adapts first order, as every evaluation here does.
    "mamlpp": {
        "learn_lr": "layer-step",
        "multi_step_loss": True,
        "msl_epochs": 10,
        "first_order_until": 0.5,
        "adapt_bn": False,
        "per_step_bn": True,
    },
    # Sharp-MAML (Abbas et al., ICML 2022) is MAML with SAM radii, not an entry
    # here: _low sets inner.sam_rho, _up train.sam_rho (an outer-step setting this table of
    # inner-rule overrides cannot hold), _both both; see docs/algorithms.md.
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


__all__ = ["ALGORITHMS", "InnerRule", "Stage", "adapt", "algorithm_rule", "group_of"]
