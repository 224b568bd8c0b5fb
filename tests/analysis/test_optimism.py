"""Held-out optimism audit: folds, selection on the selection folds only, the gap, end to end."""

from __future__ import annotations

import csv
import json
import logging

import pytest
import torch

from soup_exp.analysis.optimism import (
    FULL,
    Split,
    clamp_sizes,
    class_orders,
    fold_of_images,
    optimism_analysis,
    pack,
    select_greedy,
    splits,
    unpack,
)
from soup_exp.analyze import run_analyze
from soup_exp.errors import ConfigError
from soup_exp.soups.uniform import uniform_soup
from soup_exp.vocabulary import HELD_OUT

GREEDY = {"methods": ["greedy"], "seed": 0, "tolerance": 0.0, "metrics": None, "learned_epochs": 2,
          "learned_lr": 0.05, "learned_batch_size": 8}


def test_folds_partition_each_subsample_by_class():
    targets = torch.tensor([c for c in range(3) for _ in range(7)] + [3] * 4)  # class 3 has fewer images
    orders = class_orders(targets, seed=1)
    assert orders == class_orders(targets, seed=1) and orders != class_orders(targets, seed=2)
    previous = torch.zeros(len(targets), dtype=torch.bool)
    for per_class in (2, 5, 7):
        fold = fold_of_images(orders, per_class, folds=3, n=len(targets))
        inside = fold >= 0
        assert all(int(inside[targets == c].sum()) == min(per_class, int((targets == c).sum())) for c in range(4))
        assert bool((previous <= inside).all())  # a larger size holds every smaller one
        previous = inside
        parts = splits(fold, per_class, folds=3)
        assert [s.fold for s in parts] == [1, 2, 3, FULL]
        left_outs = torch.stack([s.left_out for s in parts[:3]])
        assert torch.equal(left_outs.sum(0), inside.long())  # disjoint, and together the whole subsample
        for s in parts[:3]:
            assert not (s.selection & s.left_out).any() and torch.equal(s.selection | s.left_out, inside)
            for c in range(4):
                counts = [int((other.left_out & (targets == c)).sum()) for other in parts[:3]]
                assert max(counts) - min(counts) <= 1  # stratified by class
        assert torch.equal(parts[3].selection, inside) and not parts[3].left_out.any()


def test_sizes_are_clamped_to_held_out_and_too_few_images_is_an_error(caplog):
    orders = {0: [0, 1, 2], 1: [3, 4]}
    with caplog.at_level(logging.WARNING):
        assert clamp_sizes([1, 3, 5, 9], orders, folds=2) == [(1, 1), (3, 3)]
    assert "5 images per class requested, held-out has at most 3" in caplog.text
    with pytest.raises(ConfigError, match=r"optimism\.sizes: 1 images per class give 2 held-out images, fewer than "
                                          r"folds=3"):
        clamp_sizes([1], orders, folds=3)


def test_correctness_bits_round_trip():
    bits = torch.tensor([True, False, True, True, False, False, True, False, True, True, False])
    assert torch.equal(unpack(pack(bits), len(bits)), bits)


class FakeCorrectness:
    """Per-image correctness given outright: ingredients, and soups by their member set."""

    def __init__(self, ingredients: list[list[int]], soups: dict[tuple[int, ...], list[int]]) -> None:
        self.ingredients = [torch.tensor(v, dtype=torch.bool) for v in ingredients]
        self.soups = {k: torch.tensor(v, dtype=torch.bool) for k, v in soups.items()}
        self.asked: list[tuple[int, ...]] = []

    def ingredient(self, index: int) -> torch.Tensor:
        return self.ingredients[index]

    def uniform(self, members) -> torch.Tensor:
        members = tuple(sorted(members))
        self.asked.append(members)
        return self.ingredients[members[0]] if len(members) == 1 else self.soups[members]


def test_the_selection_sees_only_its_own_folds():
    # images 0-5 select, 6-9 are left out; "a" is best overall only thanks to the left-out images
    selection = torch.tensor([True] * 6 + [False] * 4)
    split = Split(5, 1, selection, ~selection)
    correct = FakeCorrectness(
        ingredients=[[1, 1, 1, 0, 0, 0, 1, 1, 1, 1],   # a: 3/6 selecting, 7/10 overall
                     [1, 1, 1, 1, 0, 0, 0, 0, 0, 0],   # b: 4/6 selecting, the best there
                     [1, 0, 0, 0, 0, 0, 0, 0, 0, 0]],  # c
        soups={(0, 1): [1, 1, 1, 1, 0, 0, 1, 1, 1, 1],     # b + a: no better on the selection images
               (1, 2): [1, 1, 1, 1, 1, 0, 0, 0, 0, 0]})    # b + c: better there
    chosen = select_greedy(correct, ["a", "b", "c"], split, tolerance=0.0)
    assert chosen.best == 1 and chosen.best_in_sample == 4 / 6
    assert chosen.members == ["b", "c"] and chosen.soup_in_sample == 5 / 6
    assert correct.asked == [(0, 1), (1, 2)]  # candidates in the order the selection images rank them


@pytest.fixture
def ctx(context):
    return context("optimism")


def test_gains_gap_and_outputs_on_the_tiny_pool(ctx, world, caplog):
    pool = ctx.pool.ingredients
    for ing in pool:
        ctx.judge.heldout_logits(ing)  # the individuals' logits cached first, as the soup stage leaves them
    before = world.forward_passes.count(HELD_OUT)
    with caplog.at_level(logging.WARNING):
        numbers = optimism_analysis(ctx, **{**GREEDY, "folds": 3, "sizes": [4, 10, 26]})
    assert "26 images per class requested, held-out has at most 10" in caplog.text
    stored = json.loads((ctx.store.folder / ".partial.json").read_text())["data"]["correct"]
    assert world.forward_passes.count(HELD_OUT) - before == len(stored)  # each candidate soup once, any fold
    rows = list(csv.DictReader(ctx.store.out("optimism_folds").with_suffix(".csv").open()))
    assert [(r["images_per_class"], r["fold"]) for r in rows] == [(s, f) for s in ("4", "10")
                                                                for f in ("1", "2", "3", FULL)]
    targets = ctx.suite.evaluator.dataset(HELD_OUT).targets
    orders = class_orders(targets, seed=0)
    by_name = {ing.name: ing for ing in pool}
    evaluator = ctx.suite.evaluator
    for row in rows:
        fold = fold_of_images(orders, int(row["images_per_class"]), 3, len(targets))
        split = next(s for s in splits(fold, int(row["images_per_class"]), 3) if str(s.fold) == row["fold"])
        members = [by_name[n] for n in row["soup"].split()]
        state = uniform_soup(members, accumulate_dtype=ctx.accumulate_dtype, arithmetic=ctx.arithmetic)
        soup = evaluator.dataset(HELD_OUT).project(ctx.suite.weights_logits(state, [HELD_OUT])[HELD_OUT]).argmax(1)
        best = ctx.judge.heldout_logits(by_name[row["best_individual"]]).argmax(1)
        scores = {ing.name: (ctx.judge.heldout_logits(ing).argmax(1) == targets)[split.selection].float().mean()
                  for ing in pool}
        assert scores[row["best_individual"]] == max(scores.values())  # the best as the selection images see it
        in_sample = ((soup == targets)[split.selection].float().mean() - (best == targets)[split.selection]
                     .float().mean()).item()
        assert float(row["in_sample_gain"]) == pytest.approx(in_sample)
        assert int(row["selection_images"]) == int(split.selection.sum())
        if row["fold"] == FULL:
            assert row["out_of_sample_gain"] == "" and row["gap"] == ""
            continue
        out = ((soup == targets)[split.left_out].float().mean() - (best == targets)[split.left_out]
               .float().mean()).item()
        assert float(row["out_of_sample_gain"]) == pytest.approx(out)
        assert float(row["gap"]) == pytest.approx(in_sample - out)
        imagenet = ctx.suite.evaluator.evaluate({"soup": _loaded(ctx, state)}, ["ImageNet"])["soup"]["ImageNet"]
        best_imagenet = ctx.suite.accuracies(by_name[row["best_individual"]], ["ImageNet"])["ImageNet"]
        assert float(row["ImageNet_gain"]) == pytest.approx(imagenet - best_imagenet)
    for size in ("4", "10"):
        folds = [r for r in rows if r["images_per_class"] == size and r["fold"] != FULL]
        summary = numbers["greedy"][size]
        mean_in = sum(float(r["in_sample_gain"]) for r in folds) / 3
        mean_out = sum(float(r["out_of_sample_gain"]) for r in folds) / 3
        assert summary["in_sample_gain"] == pytest.approx(mean_in)
        assert summary["cross_fitted_gain"] == pytest.approx(mean_out)
        assert summary["gap"] == pytest.approx(mean_in - mean_out)
        assert set(summary) >= {"cross_fitted_ImageNet_gain", "cross_fitted_avg_shifts_gain", "full_held_out_gain"}
    assert numbers["metrics"] == ["ImageNet", "avg_shifts"] and numbers["held_out_images"] == len(targets)
    assert {p.name for p in ctx.store.outputs} == {"optimism_folds.csv", "optimism_gap.png", "optimism_gap.pdf",
                                                   "optimism_gap.csv"}

    passes = len(world.forward_passes)
    assert optimism_analysis(ctx, **{**GREEDY, "folds": 3, "sizes": [4, 10, 26]}) == numbers
    assert len(world.forward_passes) == passes  # resumed from its partial results: nothing evaluated again


def _loaded(ctx, state):
    model = ctx.judge.skeleton
    model.load_state_dict(state, strict=True)
    return model


def test_learned_soups_are_trained_on_the_selection_folds(ctx, monkeypatch):
    import soup_exp.analysis.optimism as optimism

    batched = optimism.LearnedRuns.batches
    seen: list[tuple[torch.Tensor, int]] = []  # each epoch's selection and the images it yielded

    def recording(self, selection, epoch):
        count = 0
        for images, targets in batched(self, selection, epoch):
            count += len(images)
            yield images, targets
        seen.append((selection, count))

    monkeypatch.setattr(optimism.LearnedRuns, "batches", recording)
    numbers = optimism_analysis(ctx, **{**GREEDY, "methods": ["learned"], "folds": 2, "sizes": [5]})
    targets = ctx.suite.evaluator.dataset(HELD_OUT).targets
    fold = fold_of_images(class_orders(targets, seed=0), 5, 2, len(targets))
    expected = [s.selection for s in splits(fold, 5, 2)]
    assert len(seen) == 3 * GREEDY["learned_epochs"]  # two folds and the whole subsample, each epoch
    for index, (selection, count) in enumerate(seen):
        assert torch.equal(selection, expected[index // GREEDY["learned_epochs"]])
        assert count == int(selection.sum())  # every selection image once an epoch, nothing else
    summary = numbers["learned"]["5"]
    assert summary["gap"] == pytest.approx(summary["in_sample_gain"] - summary["cross_fitted_gain"])
    assert len(numbers["learned_coefficients"]) == 3
    assert all(abs(sum(c) - 1) < 1e-5 for c in numbers["learned_coefficients"].values())


def test_the_yaml_composes_and_runs_through_the_stage(world, fake_run):
    cfg = world.cfg("analyses=[optimism]", "analyses.optimism.folds=2", "analyses.optimism.sizes=[5]")
    node = cfg.analyses.optimism
    assert node._target_ == "soup_exp.analysis.optimism.optimism_analysis"
    assert node.methods == ["greedy"] and node.folds == 2 and node.tolerance == 0.0
    made = run_analyze(cfg, run=fake_run())
    record = json.loads((made["optimism"] / "analysis.json").read_text())
    assert record["outputs"] == ["optimism_folds.csv", "optimism_gap.png", "optimism_gap.pdf", "optimism_gap.csv"]
    assert set(record["numbers"]["greedy"]["5"]) >= {"in_sample_gain", "cross_fitted_gain", "gap"}
    with pytest.raises(ConfigError, match=r"analyses\.optimism\.folds=1: expected a value in \[2, inf\]"):
        run_analyze(world.cfg("analyses=[optimism]", "analyses.optimism.folds=1"), run=fake_run())
    with pytest.raises(ConfigError, match=r"analyses\.optimism\.methods\[0\]='stock': expected one of greedy, "
                                          r"learned"):
        run_analyze(world.cfg("analyses=[optimism]", "analyses.optimism.methods=[stock]"), run=fake_run())
