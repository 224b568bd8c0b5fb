"""Expected calibration error: zero for a calibrated predictor, the gap for a miscalibrated one."""

from __future__ import annotations

import csv
import math

import pytest
import torch

from soup_exp.analysis.calibration import (
    calibration_analysis,
    confidence_and_correct,
    expected_calibration_error,
    reliability_bins,
)


def test_a_perfectly_calibrated_predictor_has_zero_ece():
    # in every bin, exactly a `confidence` fraction of 200 predictions is right
    confidence, correct = [], []
    for c in (0.15, 0.35, 0.55, 0.65, 0.95):
        right = round(c * 200)
        confidence += [c] * 200
        correct += [True] * right + [False] * (200 - right)
    ece = expected_calibration_error(torch.tensor(confidence, dtype=torch.float64), torch.tensor(correct), bins=10)
    assert ece == pytest.approx(0.0, abs=1e-12)


def test_a_sampled_calibrated_predictor_has_ece_near_zero_and_an_overconfident_one_its_gap():
    g = torch.Generator().manual_seed(0)
    confidence = 0.25 + 0.75 * torch.rand(200_000, generator=g, dtype=torch.float64)
    correct = torch.rand(200_000, generator=g, dtype=torch.float64) < confidence
    assert expected_calibration_error(confidence, correct) < 0.005
    always_wrong = torch.zeros_like(correct)
    assert expected_calibration_error(confidence, always_wrong) == pytest.approx(float(confidence.mean()), rel=1e-9)
    assert expected_calibration_error(torch.full((10,), 0.9), torch.ones(10, dtype=torch.bool)) == pytest.approx(0.1)


def test_softmax_confidences_of_calibrated_logits():
    # two classes; logits give class 0 probability p; the label is class 0 with probability p
    g = torch.Generator().manual_seed(1)
    p = 0.5 + 0.5 * torch.rand(100_000, generator=g, dtype=torch.float64)
    logits = torch.stack([torch.log(p), torch.log(1 - p)], dim=1)
    targets = (torch.rand(100_000, generator=g, dtype=torch.float64) >= p).long()
    confidence, correct = confidence_and_correct(logits, targets)
    assert torch.allclose(confidence, p)
    assert expected_calibration_error(confidence, correct) < 0.006


def test_bins_cover_zero_to_one():
    bins = reliability_bins(torch.tensor([0.0, 0.1, 0.5, 1.0]), torch.tensor([1, 0, 1, 1]), bins=4)
    assert [b.count for b in bins] == [2, 1, 0, 1]
    assert bins[0].confidence == pytest.approx(0.05) and bins[0].accuracy == 0.5
    assert (bins[2].confidence, bins[2].accuracy) == (0.0, 0.0)


def test_calibration_analysis_covers_individuals_soups_and_ensembles(context, cook):
    cook("uniform", "ensemble")
    ctx = context("calibration")
    numbers = calibration_analysis(ctx, bins=10, datasets=None, wise_ft=False)
    datasets = ["ImageNet", "ImageNetV2", "ImageNetSketch", "ImageNetR", "ObjectNet", "ImageNetA"]
    assert numbers["datasets"] == datasets
    assert set(numbers["ece"]) == {"zeroshot", "lp_init", "ft_0", "ft_1", "ft_2", "ft_3", "uniform", "ensemble"}
    rows = list(csv.DictReader(ctx.store.out("calibration_ece").with_suffix(".csv").open()))
    assert len(rows) == 8 * 6
    ft = ctx.pool.model("ft_2")
    scores = ctx.suite.evaluator.dataset("ImageNetR").project(ctx.judge.logits(ft, "ImageNetR"))
    probabilities = scores.double().softmax(dim=1)
    expected = expected_calibration_error(probabilities.max(1).values,
                                          probabilities.argmax(1) == ctx.suite.evaluator.dataset("ImageNetR").targets, 10)
    assert numbers["ece"]["ft_2"]["ImageNetR"] == pytest.approx(expected, abs=1e-12)
    ensemble = next(r for r in rows if r["model"] == "ensemble" and r["dataset"] == "ImageNet")
    assert float(ensemble["accuracy"]) == pytest.approx(
        ctx.suite.ensemble_accuracies([ctx.pool.model(n) for n in ctx.pool.names], ["ImageNet"])["ImageNet"])
    curves = list(csv.DictReader(ctx.store.out("reliability").with_suffix(".csv").open()))
    drawn = {r["model"] for r in curves}
    best = ctx.pool.names[ctx.pool.best_index]
    assert drawn == {"zeroshot", "lp_init", best, "uniform", "ensemble"}
    for model in drawn:  # every image lands in one bin
        counts = sum(int(r["count"]) for r in curves if r["model"] == model and r["dataset"] == "ObjectNet")
        assert counts == len(ctx.suite.evaluator.dataset("ObjectNet"))
    assert all(0 <= float(r["ece"]) <= 1 and not math.isnan(float(r["ece"])) for r in rows)
