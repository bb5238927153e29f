"""The paper's Fig. 3 analyses: validation curves, meta/co gradient similarity and norms, CKA
of representations before vs after adaptation, and a t-SNE of adapted features.

Training imports the gradient statistics from here, so this module stays light: the
report (matplotlib, scikit-learn) loads only when ``analyze`` is first used.

- ``gradients``: per-layer meta/co gradient statistics, logged while training.
- ``records``: run folders, compare folders and their ``metrics.jsonl`` records.
- ``representations``: linear CKA and activations before / after the evaluation adaptation.
- ``figures``: the PNGs.  ``report``: ``analyze``, which writes them and ``analysis.json``.
"""

from __future__ import annotations

from typing import Any

from cmlearn.app.analysis.gradients import body_gradients, gradient_split, split_stats
from cmlearn.app.analysis.representations import linear_cka

__all__ = ["analyze", "body_gradients", "gradient_split", "linear_cka", "split_stats"]


def __getattr__(name: str) -> Any:
    if name == "analyze":  # lazily: the report imports matplotlib
        from cmlearn.app.analysis.report import analyze

        return analyze
    raise AttributeError(f"module 'cmlearn.app.analysis' has no attribute {name!r}")
