"""The analysis suite: the paper's figures beyond the table, on any pool.

Each analysis is a plugin like a recipe: a callable ``fn(ctx, **params)`` named by
``analysis/<name>.yaml`` (``_target_``, ``label``, parameters), given an
:class:`AnalysisContext` and returning the numbers worth recording; its figures and tables
go to ``ctx.out(...)``. The built-in ones, one module each: ``landscape`` (error landscape),
``angles`` (angle vs soup gain), ``num_ingredients``, ``greedy_ablation``, ``calibration``.
The stage that runs them is :func:`soup_exp.analyze.run_analyze`.
"""

from soup_exp.analysis.context import AnalysisContext, SoupEntry
from soup_exp.utils.checks import Range

__all__ = ["AnalysisContext", "Range", "SoupEntry"]
