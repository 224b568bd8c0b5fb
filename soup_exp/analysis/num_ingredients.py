"""Accuracy against the number of ingredients (paper, Section 3.3 and Appendix).

Uniform soups of ``k`` ingredients drawn at random (several seeded draws per ``k``: mean
and spread), beside the greedy soup as it grows (its first ``m`` ingredients, in the order
it added them) and the best individual model. ``k = 1`` is an individual model and is
read from its cached logits, so the curves start exactly at the individuals.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Iterator, Sequence
from typing import Annotated, Any, Literal

from soup_exp.analysis.context import AnalysisContext
from soup_exp.errors import ConfigError
from soup_exp.soups.ingredients import LazyWeights
from soup_exp.soups.uniform import uniform_soup
from soup_exp.utils.checks import Range

log = logging.getLogger(__name__)

KS_CHOICES = ("all", "powers_of_two")


def sizes(ks: str | list[int], n: int) -> list[int]:
    """The ``k`` values: ``all`` (1..n), ``powers_of_two`` (1, 2, 4, ..., n) or a list."""
    if ks == "all":
        return list(range(1, n + 1))
    if ks == "powers_of_two":
        return sorted({2**i for i in range(int(math.log2(n)) + 1)} | {n})
    if isinstance(ks, list) and ks and all(isinstance(k, int) and 1 <= k <= n for k in ks):
        return sorted(set(ks))
    raise ConfigError(f"analyses.num_ingredients.ks={ks!r}: expected {' or '.join(KS_CHOICES)}, or a list of "
                      f"sizes between 1 and the pool size {n}")


def draw_subsets(n: int, ks: Sequence[int], draws: int, seed: int) -> Iterator[tuple[int, int, tuple[int, ...]]]:
    """``(k, draw, sorted indices)``: ``draws`` distinct random subsets of each size (all of
    them when there are fewer), seeded per ``k`` so adding a size changes no other draw."""
    for k in ks:
        rng = random.Random(f"{seed}:{k}")
        seen: list[tuple[int, ...]] = []
        while len(seen) < min(draws, math.comb(n, k)):
            subset = tuple(sorted(rng.sample(range(n), k)))
            if subset not in seen:
                seen.append(subset)
        for draw, subset in enumerate(seen):
            yield k, draw, subset


def num_ingredients_analysis(
    ctx: AnalysisContext,
    *,
    ks: Literal["all", "powers_of_two"] | list[Annotated[int, Range(1)]],
    draws: Annotated[int, Range(1)],
    seed: int,
    metrics: list[str],
    greedy: str | None,
) -> dict[str, Any]:
    """Analysis ``num_ingredients``: ``metrics`` (datasets or ``avg_shifts``) of uniform
    soups of ``k`` random ingredients for each ``k`` in ``ks`` (``draws`` draws, ``seed``),
    of the soup named ``greedy`` as it grew, and of the best individual."""
    pool = ctx.pool.ingredients
    datasets = ctx.suite.datasets_for(metrics)
    drawn = list(draw_subsets(len(pool), sizes(ks, len(pool)), draws, seed))
    trajectory = _greedy_prefixes(ctx, greedy)
    done = ctx.store.partial()
    best_index = ctx.pool.best_index
    subsets = list(dict.fromkeys([s for _, _, s in drawn] + [s for _, s in trajectory] + [(best_index,)]))
    for subset in subsets:
        if len(subset) == 1 and _key(pool, subset) not in done:
            done[_key(pool, subset)] = ctx.suite.accuracies(pool[subset[0]], datasets)
    final = ctx.pool.model(greedy) if trajectory else None
    if final is not None:
        done[_key(pool, trajectory[-1][1])] = ctx.suite.accuracies(final, datasets)

    def soups():
        for subset in subsets:
            if _key(pool, subset) not in done:
                members = [pool[i] for i in subset]
                yield _key(pool, subset), uniform_soup(members, accumulate_dtype=ctx.accumulate_dtype,
                                                       arithmetic=ctx.arithmetic)

    from tqdm.auto import tqdm

    todo = sum(_key(pool, s) not in done for s in subsets)
    with tqdm(total=todo, desc="random soups", disable=not ctx.progress, leave=False) as bar:
        for key, accuracies in ctx.suite.evaluate_weights(soups(), datasets):
            done[key] = accuracies
            ctx.store.save_partial(done)
            bar.update(1)

    def row(series: str, k: int, draw: int | None, subset: tuple[int, ...]) -> dict[str, Any]:
        values = done[_key(pool, subset)]
        return {"series": series, "k": k, "draw": draw, "ingredients": [pool[i].name for i in subset],
                **{m: float(values[m]) for m in metrics}}

    random_rows = [row("random", k, draw, subset) for k, draw, subset in drawn]
    greedy_rows = [row("greedy", m, None, subset) for m, subset in trajectory]
    best = {**row("best_individual", 1, None, (best_index,)), "name": pool[best_index].name}
    from soup_exp.reporting.analysis_figures import plot_num_ingredients

    ctx.store.register(plot_num_ingredients(random_rows, greedy_rows, best, metrics, ctx.store.out("num_ingredients")))
    summary: dict[str, Any] = {"pool": len(pool), "draws": draws, "best_individual": best["name"]}
    for metric in metrics:
        by_k: dict[int, list[float]] = {}
        for r in random_rows:
            by_k.setdefault(r["k"], []).append(r[metric])
        summary[metric] = {
            "mean_by_k": {str(k): sum(v) / len(v) for k, v in by_k.items()},
            "best_individual": best[metric],
            "greedy": {str(r["k"]): r[metric] for r in greedy_rows},
        }
    return summary


def _greedy_prefixes(ctx: AnalysisContext, greedy: str | None) -> list[tuple[int, tuple[int, ...]]]:
    """``(m, indices of its first m ingredients)`` for the greedy soup ``greedy``, or [] when
    there is none (not cooked, not selected, or made from ingredients outside the pool)."""
    if not greedy:
        return []
    if not (ctx.pool.soups_dir / greedy).is_dir():
        log.warning("num_ingredients: no soup %r in %s; the greedy curve is left out (cook it with the soup "
                    "stage, or set analyses.num_ingredients.greedy=null)", greedy, ctx.pool.soups_dir)
        return []
    chosen = ctx.pool.model(greedy).info.get("ingredients") or []
    index = {ing.name: i for i, ing in enumerate(ctx.pool.ingredients)}
    if not chosen or any(name not in index for name in chosen):
        log.warning("num_ingredients: soup %r lists ingredients outside the pool (%s); the greedy curve is left out",
                    greedy, ", ".join(chosen))
        return []
    order = [index[name] for name in chosen]
    return [(m, tuple(sorted(order[:m]))) for m in range(1, len(order) + 1)]


def _key(pool: Sequence[LazyWeights], subset: tuple[int, ...]) -> str:
    return "+".join(pool[i].name for i in subset)
