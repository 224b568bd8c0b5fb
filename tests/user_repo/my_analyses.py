"""A researcher's own analyses, living in their repository (see docs/extending.md)."""

from __future__ import annotations

from typing import Annotated

from soup_exp.analysis import AnalysisContext, Range
from soup_exp.reporting.figures import new_figure, save_figure
from soup_exp.soups import uniform_soup


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


def top_k_gain(ctx: AnalysisContext, *, k: Annotated[int, Range(2)], dataset: str) -> dict:
    """Does the uniform soup of the ``k`` best ingredients beat the best one, on held-out
    (the judge) and on ``dataset`` (the suite)? The soup's numbers survive an interruption."""
    pool, judge, suite, store = ctx.pool, ctx.judge, ctx.suite, ctx.store
    suite.datasets_for([dataset])
    chosen = sorted(range(len(pool.ingredients)), key=lambda i: -pool.scores[i])[:k]
    soup = store.partial()
    if not soup:
        weights = uniform_soup([pool.ingredients[i] for i in chosen], arithmetic=ctx.arithmetic,
                               accumulate_dtype=ctx.accumulate_dtype)
        [(_, accuracies)] = suite.evaluate_weights([("soup", weights)], [dataset])
        soup = {"held_out": judge.evaluate(weights), dataset: accuracies[dataset]}
        store.save_partial(soup)
    best = pool.ingredients[pool.best_index]
    rows = [["best", best.name, pool.scores[pool.best_index], suite.accuracies(best, [dataset])[dataset]],
            ["soup", "+".join(pool.names[i] for i in chosen), soup["held_out"], soup[dataset]]]
    store.save_table("top_k_gain", ["model", "ingredients", "held_out", dataset], rows)
    return {"held_out_gain": rows[1][2] - rows[0][2], "dataset_gain": rows[1][3] - rows[0][3]}
