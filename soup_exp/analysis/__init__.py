"""The analysis suite: the paper's figures beyond the table, on any pool.

Each analysis is a plugin like a recipe: a callable ``fn(ctx, **params)`` named by
``analysis/<name>.yaml`` (``_target_``, ``label``, parameters), given an
:class:`AnalysisContext` (``pool``, ``judge``, ``store``, ``suite``) and returning the
numbers worth recording; its figures and tables go to ``ctx.store.out(...)``. The built-in ones, one module each: ``landscape`` (error landscape),
``angles`` (angle vs soup gain), ``num_ingredients``, ``greedy_ablation``, ``calibration``.
The stage that runs them is :func:`soup_exp.analyze.run_analyze`.
"""

from soup_exp.analysis.context import AnalysisContext
from soup_exp.analysis.pool import AnalysisPool, SoupEntry
from soup_exp.analysis.store import AnalysisStore
from soup_exp.analysis.suite import Suite
from soup_exp.utils.checks import Range

__all__ = ["AnalysisContext", "AnalysisPool", "AnalysisStore", "Range", "SoupEntry", "Suite"]
