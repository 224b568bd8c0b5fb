"""Greedy soup ablations (paper, Appendix): candidate order and tolerance.

The paper sorts candidates by held-out accuracy and keeps one only if the soup strictly
improves. Here the same greedy soup (:func:`soup_exp.soups.greedy.greedy_soup`, held-out
scoring through the cached evaluator) runs with ``orders`` random candidate orders and at
each tolerance of ``tolerances`` in the sorted order. Each run's held-out accuracy is the
one the greedy rule measured; its soup is then evaluated on ``metrics`` (once per distinct
set of kept ingredients, as their uniform soup). Runs resume from their greedy state files.
"""

from __future__ import annotations

import logging
import random
from typing import Annotated, Any

from tqdm.auto import tqdm

from soup_exp.analysis.context import AnalysisContext
from soup_exp.soups.greedy import greedy_soup
from soup_exp.soups.greedy_rule import greedy_order
from soup_exp.soups.uniform import uniform_soup
from soup_exp.utils.checks import Range

log = logging.getLogger(__name__)


def random_orders(n: int, count: int, seed: int) -> list[list[int]]:
    """``count`` seeded permutations of ``range(n)``."""
    rng = random.Random(seed)
    return [rng.sample(range(n), n) for _ in range(count)]


def greedy_ablation_analysis(
    ctx: AnalysisContext,
    *,
    orders: Annotated[int, Range(0)],
    seed: int,
    tolerances: list[Annotated[float, Range(0.0)]],
    metrics: list[str],
) -> dict[str, Any]:
    """Analysis ``greedy_ablation``: greedy soups with ``orders`` random candidate orders
    (``seed``) and with each of ``tolerances`` in the sorted order, evaluated on ``metrics``."""
    pool = ctx.pool.ingredients
    datasets = ctx.suite.datasets_for(metrics)
    sorted_order = greedy_order(ctx.pool.names, ctx.pool.scores)
    runs: list[dict[str, Any]] = [{"run": f"tolerance_{t:g}", "order": "sorted", "tolerance": float(t),
                                   "indices": sorted_order} for t in sorted({0.0, *map(float, tolerances)})]
    runs += [{"run": f"random_{i}", "order": "random", "tolerance": 0.0, "indices": order}
             for i, order in enumerate(random_orders(len(pool), orders, seed))]
    done = ctx.store.partial()
    state_dir = ctx.store.folder / ".state"
    for run in tqdm([r for r in runs if r["run"] not in done], desc="greedy runs", disable=not ctx.progress,
                    leave=False):
        result = greedy_soup(pool, ctx.pool.scores, ctx.judge.evaluate, tolerance=run["tolerance"],
                             order=None if run["order"] == "sorted" else run["indices"],
                             state_file=state_dir / f"{run['run']}.json", accumulate_dtype=ctx.accumulate_dtype,
                             candidate_buffer=ctx.judge.candidate_buffer(), arithmetic=ctx.arithmetic)
        done[run["run"]] = {"chosen": result.chosen_names, "held_out": result.accuracy}
        ctx.store.save_partial(done)

    soups = {_set_key(done[r["run"]]["chosen"]): sorted(done[r["run"]]["chosen"]) for r in runs}
    by_name = dict(zip(ctx.pool.names, pool, strict=True))
    evaluated = dict(done.get("_soups") or {})

    def candidates():
        for key, names in sorted(soups.items()):
            if key in evaluated:
                continue
            members = [by_name[name] for name in names]
            if len(members) == 1:
                evaluated[key] = ctx.suite.accuracies(members[0], datasets)
                continue
            yield key, uniform_soup(members, accumulate_dtype=ctx.accumulate_dtype, arithmetic=ctx.arithmetic)

    for key, accuracies in ctx.suite.evaluate_weights(candidates(), datasets):
        evaluated[key] = accuracies
        ctx.store.save_partial({**done, "_soups": evaluated})

    rows = []
    for run in runs:
        outcome = done[run["run"]]
        values = evaluated[_set_key(outcome["chosen"])]
        rows.append({"run": run["run"], "order": run["order"], "tolerance": run["tolerance"],
                     "size": len(outcome["chosen"]), "held_out": outcome["held_out"], "chosen": outcome["chosen"],
                     **{m: float(values[m]) for m in metrics}})
    from soup_exp.reporting.analysis_figures import plot_greedy_orders, plot_greedy_tolerance

    if orders:
        ctx.store.register(plot_greedy_orders(rows, metrics, ctx.store.out("greedy_orders")))
    ctx.store.register(plot_greedy_tolerance(rows, metrics, ctx.store.out("greedy_tolerance")))
    _remove_states(state_dir)
    sorted_row = next(r for r in rows if r["run"] == "tolerance_0")
    random_rows = [r for r in rows if r["order"] == "random"]
    return {
        "sorted": {k: sorted_row[k] for k in ("size", "held_out", *metrics)},
        "random_orders": len(random_rows),
        "random_held_out": [r["held_out"] for r in random_rows],
        "random_sizes": [r["size"] for r in random_rows],
        "random_at_least_sorted": (sum(r["held_out"] >= sorted_row["held_out"] for r in random_rows) / len(random_rows)
                                   if random_rows else None),
        "tolerance": {f"{r['tolerance']:g}": {k: r[k] for k in ("size", "held_out", *metrics)}
                      for r in rows if r["order"] == "sorted"},
    }


def _set_key(names: list[str]) -> str:
    from soup_exp.utils.hashing import stable_hash

    return stable_hash(sorted(names))


def _remove_states(state_dir) -> None:
    if state_dir.is_dir():
        for path in state_dir.glob("*.json"):
            path.unlink()
        state_dir.rmdir()
