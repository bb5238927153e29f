"""Cooperative Meta-Learning: the co-learner term, its controls and its evaluation modes.

Per task the outer loss is ``L(f^m_{ψ',θ'}; Q) + γ · L(f^c_{ψ',ϕ}; Q)`` (paper Eq. 6): the
co-learner ϕ reads the adapted body ψ' on the query set and is never adapted itself. The
controls differ only in data:

=========  ================================  =====================  ==================
mode       co-learner in the inner loop      ϕ trained (outer)      co-term in outer
=========  ================================  =====================  ==================
none       no (plain MAML / base algorithm)  no                     no
cml        no                                yes                    yes (γ)
random     no                                no (frozen at init)    yes (γ)
cl         yes: adapted on γ-weighted loss   yes                    yes (γ)
=========  ================================  =====================  ==================
"""

from __future__ import annotations

from dataclasses import dataclass

CO_MODES = ("none", "cml", "random", "cl")
EVAL_MODES = ("cml", "maml", "cml-dagger", "cml-dagger-code", "cml-dagger-unadapted")


@dataclass(frozen=True)
class CoLearnerSpec:
    """Which co-learner control runs, and its loss scale γ."""

    mode: str = "none"
    gamma: float = 0.2

    def __post_init__(self) -> None:
        if self.mode not in CO_MODES:
            choices = ", ".join(CO_MODES)
            raise ValueError(f"unknown co-learner mode {self.mode!r}; choose from {choices}")

    @property
    def active(self) -> bool:
        return self.mode != "none"

    @property
    def adapts(self) -> bool:
        """The CL baseline: ϕ is adapted in the inner loop together with ψ and θ."""
        return self.mode == "cl"

    @property
    def trained(self) -> bool:
        return self.mode in ("cml", "cl")

    def heads(self, inner: bool) -> tuple[str, ...]:
        """Heads a support (``inner``) or query pass needs to evaluate."""
        use_co = self.adapts if inner else self.active
        return ("meta", "co") if use_co else ("meta",)


@dataclass(frozen=True)
class EvalPlan:
    """How a test task is solved: which loss adapts which groups, and which head predicts."""

    adapt_head: str
    body_only: bool
    predict_head: str
    adapt_colearner: bool = True  # a CL run adapts ϕ in its inner loop unless this is False


EVAL_PLANS = {
    # Eq. 8: adapt (ψ, θ) with the meta-learner's loss; predict with the meta-learner.
    # The co-learner is not used: this is exactly MAML's inference.
    "cml": EvalPlan("meta", False, "meta"),
    # The same plan by its other name: a MAML run (co-learner ``none``) is scored this way.
    "maml": EvalPlan("meta", False, "meta"),
    # Eq. 9 (CML†, paper): adapt ψ only with the co-learner's support loss; predict f^c(ψ', ϕ).
    "cml-dagger": EvalPlan("co", True, "co"),
    # CML† as the official test_cml.py does it: adapt (ψ, θ) with the meta-learner's loss,
    # then predict with the frozen co-learner on the adapted features.
    "cml-dagger-code": EvalPlan("meta", False, "co"),
    # Table 4's "CL† w/o adaptation": as cml-dagger-code, but a CL run's ϕ is not adapted
    # either (its inner loop uses the meta-learner's loss alone). For CML, which never adapts
    # ϕ, it is cml-dagger-code itself.
    "cml-dagger-unadapted": EvalPlan("meta", False, "co", adapt_colearner=False),
}


def eval_plan(mode: str) -> EvalPlan:
    if mode not in EVAL_PLANS:
        raise ValueError(f"unknown evaluation mode {mode!r}; choose from {', '.join(EVAL_MODES)}")
    return EVAL_PLANS[mode]
