"""Expected calibration error: zero for a calibrated predictor, the gap for a miscalibrated one."""

from __future__ import annotations

import csv
import math

import pytest
import torch

from soup_exp.analysis import calibration
from soup_exp.analysis.calibration import (
    TEMPERATURE_RANGE,
    calibration_analysis,
    confidence_and_correct,
    expected_calibration_error,
    fit_temperature,
    reliability_bins,
)
from soup_exp.analysis.suite import Suite
from soup_exp.errors import ConfigError
from soup_exp.utils.plugins import check_params
from soup_exp.vocabulary import HELD_OUT


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
    numbers = calibration_analysis(ctx, bins=10, datasets=None, wise_ft=False, binning="width", temperature=False)
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


def test_equal_mass_bins_hold_equal_counts_and_their_ece_is_the_hand_computed_one():
    confidence = torch.tensor([0.9, 0.4, 0.6, 0.55, 0.95, 0.3, 0.8], dtype=torch.float64)
    correct = torch.tensor([1, 0, 1, 0, 1, 1, 0])
    bins = reliability_bins(confidence, correct, bins=3, binning="mass")
    # ranked: 0.3 (right), 0.4, 0.55 | 0.6 (right), 0.8 | 0.9 (right), 0.95 (right); 7 = 3 + 2 + 2
    assert [b.count for b in bins] == [3, 2, 2]
    assert [(b.low, b.high) for b in bins] == [(0.3, 0.55), (0.6, 0.8), (0.9, 0.95)]
    assert [b.accuracy for b in bins] == pytest.approx([1 / 3, 0.5, 1.0])
    assert [b.confidence for b in bins] == pytest.approx([1.25 / 3, 0.7, 0.925])
    by_hand = 3 / 7 * abs(1 / 3 - 1.25 / 3) + 2 / 7 * abs(0.5 - 0.7) + 2 / 7 * abs(1.0 - 0.925)
    assert by_hand == pytest.approx(0.8 / 7)
    assert expected_calibration_error(confidence, correct, bins=3, binning="mass") == pytest.approx(by_hand, abs=1e-12)
    # the same images by equal width: a different answer, so the option is not ignored
    assert expected_calibration_error(confidence, correct, bins=3) != pytest.approx(by_hand)

    g = torch.Generator().manual_seed(3)
    confidence = torch.rand(1000, generator=g, dtype=torch.float64) ** 3  # crowded near 0: width bins are uneven
    bins = reliability_bins(confidence, confidence > 0.5, bins=15, binning="mass")
    assert [b.count for b in bins] == [67] * 10 + [66] * 5
    assert all(a.high <= b.low for a, b in zip(bins, bins[1:], strict=False))
    assert len(reliability_bins(confidence[:4], confidence[:4] > 0.5, bins=15, binning="mass")) == 4


def test_equal_mass_bins_split_tied_confidences_in_dataset_order():
    # 6000 ties: an unstable sort may shuffle them; the stable one keeps the right ones first
    correct = torch.tensor([True] * 3000 + [False] * 3000)
    confidence = torch.full((6000,), 0.5, dtype=torch.float64)
    bins = reliability_bins(confidence, correct, bins=2, binning="mass")
    assert [(b.count, b.accuracy) for b in bins] == [(3000, 1.0), (3000, 0.0)]
    assert expected_calibration_error(confidence, correct, bins=2, binning="mass") == pytest.approx(0.5)
    assert expected_calibration_error(confidence, correct, bins=2) == pytest.approx(0.0)  # one width bin


def _tempered(seed: int, t_true: float, images: int = 20_000) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits whose labels are drawn from softmax(logits / t_true): calibrated at t_true."""
    g = torch.Generator().manual_seed(seed)
    logits = 3.0 * torch.randn(images, 10, generator=g, dtype=torch.float64)
    labels = torch.multinomial(torch.softmax(logits / t_true, dim=1), 1, generator=g).squeeze(1)
    return logits, labels


@pytest.mark.parametrize("seed", range(4))
def test_the_temperature_fit_recovers_the_temperature_that_drew_the_labels(seed):
    for t_true in (0.5, 1.0, 2.0):
        logits, labels = _tempered(seed, t_true)
        assert fit_temperature(logits, labels) == pytest.approx(t_true, rel=0.06)  # worst of 80 draws: 2.4 %
    fitted = fit_temperature(logits, labels)
    assert fitted == fit_temperature(logits, labels)  # deterministic

    def nll(t: float) -> float:
        return float(torch.nn.functional.cross_entropy(logits / t, labels))

    assert nll(fitted) < min(nll(fitted * 0.999), nll(fitted * 1.001))  # the minimum, not merely near t_true
    assert fit_temperature(logits.float(), labels) == pytest.approx(fit_temperature(logits, labels), rel=1e-4)


def test_a_separable_held_out_set_drives_the_temperature_to_the_edge_of_its_range():
    logits = torch.eye(4, dtype=torch.float64).repeat(5, 1) * 10
    assert fit_temperature(logits, torch.arange(4).repeat(5)) == pytest.approx(TEMPERATURE_RANGE[0], rel=1e-3)


def test_temperature_scaling_lowers_the_ece_of_an_overconfident_model():
    logits, labels = _tempered(7, 2.5, images=40_000)  # softmax(logits) is overconfident
    fit, test = slice(0, 20_000), slice(20_000, None)
    t = fit_temperature(logits[fit], labels[fit])
    for binning in ("width", "mass"):
        plain = expected_calibration_error(*confidence_and_correct(logits[test], labels[test]), binning=binning)
        scaled = expected_calibration_error(*confidence_and_correct(logits[test] / t, labels[test]), binning=binning)
        assert plain > 0.15 and scaled < 0.02, (binning, plain, scaled)


def test_calibration_parameters_are_checked_before_the_analysis_runs():
    params = {"bins": 15, "datasets": None, "wise_ft": False, "temperature": True}
    check_params(calibration_analysis, {**params, "binning": ["width", "mass"]}, "analyses.calibration")
    check_params(calibration_analysis, {**params, "binning": "mass"}, "analyses.calibration")
    with pytest.raises(ConfigError, match=r"analyses.calibration.binning"):
        check_params(calibration_analysis, {**params, "binning": ["width", "quantile"]}, "analyses.calibration")


def test_calibration_analysis_reports_both_binnings_and_temperature_scaled_ece(context, cook, monkeypatch):
    cook("uniform", "ensemble")
    ctx = context("calibration")
    # every model gets the tiny world's held-out set right, so its NLL falls all the way to
    # T -> 0; its sketches are the set where the fit has an interior minimum to find
    fit_on = "ImageNetSketch"
    monkeypatch.setattr(calibration, "HELD_OUT", fit_on)
    numbers = calibration_analysis(ctx, bins=10, datasets=None, wise_ft=False, binning=["width", "mass"],
                                   temperature=True)
    models = {"zeroshot", "lp_init", "ft_0", "ft_1", "ft_2", "ft_3", "uniform", "ensemble"}
    assert numbers["binning"] == ["width", "mass"]
    for key in ("ece", "ece_width", "ece_mass", "ece_scaled", "ece_width_scaled", "ece_mass_scaled", "temperature"):
        assert set(numbers[key]) == models, key
    assert numbers["ece"] == numbers["ece_width"] and numbers["ece_scaled"] == numbers["ece_width_scaled"]
    assert all(0.1 < t < 10 for t in numbers["temperature"].values())  # inside the range, not at its edge

    assert numbers["datasets"] == ["ImageNet2p", "ImageNet", "ImageNetV2", "ImageNetR", "ObjectNet", "ImageNetA"]
    held_out = ctx.suite.evaluator.dataset(fit_on).targets
    t = fit_temperature(ctx.suite.target_scores(ctx.pool.model("ft_2"), fit_on), held_out)
    assert numbers["temperature"]["ft_2"] == t
    members = [ctx.pool.model(n) for n in ctx.pool.names]
    t_ensemble = fit_temperature(ctx.suite.ensemble_scores(members, fit_on), held_out)
    assert numbers["temperature"]["ensemble"] == pytest.approx(t_ensemble, rel=1e-9)
    assert t_ensemble != pytest.approx(t, rel=1e-3)  # its own scores, not a member's
    scores = ctx.suite.target_scores(ctx.pool.model("ft_2"), "ImageNetR")
    targets = ctx.suite.evaluator.dataset("ImageNetR").targets
    confidence, correct = confidence_and_correct(scores, targets)
    scaled, _ = confidence_and_correct(scores.double() / t, targets)
    assert float(scaled.mean()) != pytest.approx(float(confidence.mean()), rel=1e-3)
    assert numbers["ece_mass"]["ft_2"]["ImageNetR"] == pytest.approx(
        expected_calibration_error(confidence, correct, 10, "mass"), abs=1e-12)
    assert numbers["ece_mass_scaled"]["ft_2"]["ImageNetR"] == pytest.approx(
        expected_calibration_error(scaled, correct, 10, "mass"), abs=1e-12)
    assert numbers["ece_width_scaled"]["ft_2"]["ImageNetR"] == pytest.approx(
        expected_calibration_error(scaled, correct, 10), abs=1e-12)

    rows = list(csv.DictReader(ctx.store.out("calibration_ece").with_suffix(".csv").open()))
    assert len(rows) == 8 * 6
    for row in rows:
        for key in ("ece_width", "ece_mass", "ece_width_scaled", "ece_mass_scaled"):
            assert float(row[key]) == pytest.approx(numbers[key][row["model"]][row["dataset"]], rel=1e-12)
        assert float(row["temperature"]) == pytest.approx(numbers["temperature"][row["model"]], rel=1e-12)
    curves = list(csv.DictReader(ctx.store.out("reliability").with_suffix(".csv").open()))
    assert {r["binning"] for r in curves} == {"width"}


def test_reliability_diagrams_follow_the_equal_mass_binning(context, cook):
    cook("ensemble")
    ctx = context("calibration")
    numbers = calibration_analysis(ctx, bins=4, datasets=["ImageNet", "ObjectNet"], wise_ft=False, binning="mass",
                                   temperature=False)
    assert set(numbers) == {"bins", "binning", "datasets", "ece", "ece_mass"}
    curves = list(csv.DictReader(ctx.store.out("reliability").with_suffix(".csv").open()))
    for model in {r["model"] for r in curves}:
        for dataset in ("ImageNet", "ObjectNet"):
            counts = [int(r["count"]) for r in curves if r["model"] == model and r["dataset"] == dataset]
            assert len(counts) == 4 and sum(counts) == len(ctx.suite.evaluator.dataset(dataset))
            assert max(counts) - min(counts) <= 1
    rows = list(csv.DictReader(ctx.store.out("calibration_ece").with_suffix(".csv").open()))
    assert "temperature" not in rows[0] and "ece_width" not in rows[0]


def test_temperature_scaling_without_held_out_is_an_error_that_says_how_to_fix_it(context, monkeypatch):
    ctx = context("calibration")
    monkeypatch.setattr(Suite, "names", property(lambda self: [n for n in self.evaluator.names if n != HELD_OUT]))
    with pytest.raises(ConfigError, match=r"analysis calibration: .*ImageNet2p.*analyses.calibration.temperature=false"):
        calibration_analysis(ctx, bins=10, datasets=None, wise_ft=False, binning="width", temperature=True)
    numbers = calibration_analysis(ctx, bins=10, datasets=["ImageNet"], wise_ft=False, binning="width",
                                   temperature=False)
    assert "temperature" not in numbers


def test_the_ece_figure_draws_temperature_scaled_ece_in_a_second_panel(monkeypatch, tmp_path):
    from soup_exp.reporting import analysis_figures

    drawn = []
    monkeypatch.setattr(analysis_figures, "save_figure", lambda fig, out_base, formats=None: drawn.append(fig) or [])
    rows = [{"model": m, "kind": k, "recipe": r, "dataset": d, "ece": 0.1, "ece_scaled": 0.03, "temperature": 1.5}
            for m, k, r in (("ft_0", "finetune", ""), ("greedy", "soup", "greedy")) for d in ("ImageNet", "ImageNetA")]
    paths = analysis_figures.plot_ece(rows, ["ImageNet", "ImageNetA"], tmp_path / "ece",
                                      columns=["model", "dataset", "temperature", "ece", "ece_scaled"])
    (fig,) = drawn
    assert [ax.get_title() for ax in fig.axes] == ["As predicted", "Temperature-scaled (T fitted on held-out)"]
    assert [sorted(y for c in ax.collections for _, y in c.get_offsets()) for ax in fig.axes] == [
        pytest.approx([10.0] * 4), pytest.approx([3.0] * 4)]
    assert next(csv.reader(paths[-1].open())) == ["model", "dataset", "temperature", "ece", "ece_scaled"]
    analysis_figures.plot_ece([{k: v for k, v in r.items() if k != "ece_scaled"} for r in rows],
                              ["ImageNet", "ImageNetA"], tmp_path / "plain")
    assert len(drawn[1].axes) == 1
