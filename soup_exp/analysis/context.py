"""What every analysis is handed: the pool, the judge, its own store and the whole suite.

Built by the stage for each analysis (:func:`soup_exp.stages.roles.AnalysisRoles.context`),
never changed while it runs. The pool and judge (one evaluator with held-out first, then
ImageNet, the shifts and the user's datasets) are the stage's, shared by every analysis;
the store (its folder, outputs and inputs) is the analysis's own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from soup_exp.analysis.pool import AnalysisPool, SoupEntry
from soup_exp.analysis.store import AnalysisStore
from soup_exp.analysis.suite import Suite
from soup_exp.soups.judge import Judge

__all__ = ["AnalysisContext", "SoupEntry"]


@dataclass(frozen=True)
class AnalysisContext:
    """``pool`` (ingredients, scores, soups, initialisation), ``judge`` (held-out evaluation),
    ``store`` (``out``, ``save_table``, ``register``, ``partial``), ``suite`` (accuracies on
    every dataset), the ``run`` and the settings weight-space candidates are mixed with."""

    pool: AnalysisPool
    judge: Judge
    store: AnalysisStore
    suite: Suite
    run: Any
    name: str
    accumulate_dtype: torch.dtype
    arithmetic: str
    progress: bool
