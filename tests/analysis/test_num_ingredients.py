"""Accuracy against the number of ingredients: random draws, the greedy soup's growth."""

from __future__ import annotations

import csv

import pytest

from soup_exp.analysis.num_ingredients import draw_subsets, num_ingredients_analysis, sizes
from soup_exp.errors import ConfigError
from soup_exp.soups.uniform import uniform_soup


def test_sizes_and_draws():
    assert sizes("all", 4) == [1, 2, 3, 4]
    assert sizes("powers_of_two", 9) == [1, 2, 4, 8, 9]
    assert sizes([3, 1, 3], 5) == [1, 3]
    with pytest.raises(ConfigError, match=r"num_ingredients\.ks=\[0, 7\]"):
        sizes([0, 7], 5)
    drawn = list(draw_subsets(5, [1, 2, 5], draws=3, seed=0))
    assert [(k, d) for k, d, _ in drawn] == [(1, 0), (1, 1), (1, 2), (2, 0), (2, 1), (2, 2), (5, 0)]
    assert all(len(s) == k and len(set(s)) == k and list(s) == sorted(s) for k, _, s in drawn)
    assert len({s for k, _, s in drawn if k == 2}) == 3  # distinct draws
    assert list(draw_subsets(5, [2], draws=3, seed=0)) == [d for d in drawn if d[0] == 2]  # seeded per k


def test_curves_start_at_the_individuals_and_end_at_the_uniform_soup(context, cook):
    cook("greedy")
    ctx = context("num_ingredients")
    metrics = ["ImageNet2p", "avg_shifts"]
    numbers = num_ingredients_analysis(ctx, ks="all", draws=3, seed=0, metrics=metrics, greedy="greedy")
    rows = list(csv.DictReader(ctx.store.out("num_ingredients").with_suffix(".csv").open()))
    pool = {ing.name: ing for ing in ctx.pool.ingredients}
    singles = [r for r in rows if r["series"] == "random" and r["k"] == "1"]
    assert len(singles) == 3
    for row in singles:
        individual = ctx.suite.accuracies(pool[row["ingredients"]], ctx.suite.names)
        for metric in metrics:
            assert float(row[metric]) == individual[metric]
    (everything,) = [r for r in rows if r["series"] == "random" and r["k"] == "5"]
    soup = ctx.judge.skeleton
    soup.load_state_dict(uniform_soup(ctx.pool.ingredients, arithmetic=ctx.arithmetic))
    expected = ctx.suite.evaluator.evaluate({"uniform": soup})["uniform"]
    assert float(everything["ImageNet2p"]) == pytest.approx(expected["ImageNet2p"], abs=1e-12)
    assert float(everything["avg_shifts"]) == pytest.approx(expected["avg_shifts"], abs=1e-12)

    greedy = [r for r in rows if r["series"] == "greedy"]
    chosen = ctx.pool.model("greedy").info["ingredients"]
    assert [r["k"] for r in greedy] == [str(m) for m in range(1, len(chosen) + 1)]
    assert float(greedy[0]["ImageNet2p"]) == ctx.suite.accuracies(pool[chosen[0]], ["ImageNet2p"])["ImageNet2p"]
    assert float(greedy[-1]["ImageNet2p"]) == pytest.approx(ctx.pool.model("greedy").info["held_out_accuracy"])
    best = next(r for r in rows if r["series"] == "best_individual")
    assert best["ingredients"] == ctx.pool.names[ctx.pool.best_index] == numbers["best_individual"]
    assert numbers["ImageNet2p"]["mean_by_k"]["1"] == pytest.approx(sum(float(r["ImageNet2p"]) for r in singles) / 3)


def test_without_a_greedy_soup_the_curve_is_left_out(context, caplog):
    ctx = context("num_ingredients")
    with caplog.at_level("WARNING"):
        numbers = num_ingredients_analysis(ctx, ks=[1, 5], draws=1, seed=0, metrics=["ImageNet"], greedy="greedy")
    assert "no soup 'greedy'" in caplog.text and numbers["ImageNet"]["greedy"] == {}
