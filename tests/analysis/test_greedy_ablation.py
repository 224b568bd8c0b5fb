"""Greedy soup ablations: candidate orders and tolerance."""

from __future__ import annotations

import csv

import pytest

from soup_exp.analysis.greedy_ablation import greedy_ablation_analysis, random_orders
from soup_exp.soups.greedy import greedy_soup
from soup_exp.soups.ingredients import IngredientError


def test_random_orders_are_seeded_permutations():
    orders = random_orders(6, 4, seed=1)
    assert all(sorted(o) == list(range(6)) for o in orders) and orders == random_orders(6, 4, seed=1)
    assert len({tuple(o) for o in orders}) == 4


def test_greedy_soup_in_a_given_order(context):
    ctx = context()
    order = [3, 0, 4, 1, 2]
    result = greedy_soup(ctx.pool.ingredients, ctx.pool.scores, ctx.judge.evaluate, order=order)
    assert result.chosen[0] == 3 and [h["index"] for h in result.history] == order
    assert result.history[0]["accuracy"] == ctx.pool.scores[3]
    with pytest.raises(IngredientError, match="each of the 5 ingredients once"):
        greedy_soup(ctx.pool.ingredients, ctx.pool.scores, ctx.judge.evaluate, order=[0, 1, 1, 2, 3])


def test_orders_and_tolerances(context):
    ctx = context("greedy_ablation")
    numbers = greedy_ablation_analysis(ctx, orders=4, seed=0, tolerances=[0.0, 0.05, 1.0], metrics=["ImageNet"])
    rows = list(csv.DictReader(ctx.store.out("greedy_orders").with_suffix(".csv").open()))
    assert [r["run"] for r in rows] == ["tolerance_0", "tolerance_0.05", "tolerance_1",
                                        "random_0", "random_1", "random_2", "random_3"]
    paper = greedy_soup(ctx.pool.ingredients, ctx.pool.scores, ctx.judge.evaluate, arithmetic=ctx.arithmetic)
    assert numbers["sorted"]["size"] == len(paper.chosen) and numbers["sorted"]["held_out"] == paper.accuracy
    assert rows[0]["chosen"] == " ".join(paper.chosen_names)
    assert numbers["tolerance"]["1"]["size"] == 1  # nothing improves held-out by 100 points
    assert numbers["tolerance"]["1"]["held_out"] == max(ctx.pool.scores)
    by_run = {r["run"]: r for r in rows}
    for index, order in enumerate(random_orders(5, 4, seed=0)):
        run = greedy_soup(ctx.pool.ingredients, ctx.pool.scores, ctx.judge.evaluate, order=order, arithmetic=ctx.arithmetic)
        assert by_run[f"random_{index}"]["chosen"] == " ".join(run.chosen_names)
        assert float(by_run[f"random_{index}"]["held_out"]) == run.accuracy
    single = next(r for r in rows if r["size"] == "1")
    model = ctx.pool.model(single["chosen"])
    assert float(single["ImageNet"]) == ctx.suite.accuracies(model, ["ImageNet"])["ImageNet"]
    assert numbers["random_orders"] == 4 and len(numbers["random_sizes"]) == 4
    assert not (ctx.store.folder / ".state").exists()  # the greedy runs' resume files are cleaned up
    assert {p.name for p in ctx.store.outputs} == {f"greedy_{f}.{s}" for f in ("orders", "tolerance")
                                             for s in ("png", "pdf", "csv")}
