"""A researcher's own analysis, living in their repository (see docs/extending.md)."""

from __future__ import annotations

from typing import Annotated

from soup_exp.analysis import AnalysisContext, Range
from soup_exp.reporting.figures import new_figure, save_figure


def held_out_vs(ctx: AnalysisContext, *, dataset: str, top: Annotated[int, Range(1)] | None = None) -> dict:
    """Does held-out accuracy predict accuracy on ``dataset``? One point per ingredient
    (the ``top`` best on held-out, or all), with the ranks' agreement."""
    pool = ctx.pool
    ranked = sorted(range(len(pool.ingredients)), key=lambda i: -pool.scores[i])[:top]
    points = [(pool.names[i], pool.scores[i], ctx.suite.accuracies(pool.ingredients[i], [dataset])[dataset])
              for i in ranked]
    ctx.store.save_table("held_out_vs", ["name", "held_out", dataset], points)
    fig, ax = new_figure()
    ax.scatter([100 * p[1] for p in points], [100 * p[2] for p in points])
    ax.set_xlabel("Held-out accuracy (%)")
    ax.set_ylabel(f"{dataset} accuracy (%)")
    ctx.store.register(save_figure(fig, ctx.store.out("held_out_vs")))
    best_on_dataset = max(points, key=lambda p: p[2])[0]
    return {"models": len(points), "best_on_held_out": points[0][0], "best_on_dataset": best_on_dataset}

