"""Paired bootstrap intervals and McNemar's exact test of per-image hits."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binomtest

from soup_exp.reporting.uncertainty import PairedBootstrap, mcnemar_exact, replicate_accuracies
from soup_exp.vocabulary import AVG_SHIFTS, SHIFTS

# P(A right, B right), P(A right, B wrong), P(A wrong, B right), P(both wrong)
JOINT = (0.70, 0.10, 0.05, 0.15)
TRUE_DIFFERENCE = JOINT[1] - JOINT[2]


def paired_hits(rng: np.random.Generator, images: int) -> tuple[np.ndarray, np.ndarray]:
    cell = rng.choice(4, size=images, p=JOINT)
    return np.isin(cell, (0, 1)), np.isin(cell, (0, 2))


def test_the_paired_interval_covers_a_known_difference_95_times_in_100():
    """400 test sets drawn from a known joint distribution of two models' hits: the paired
    95 % interval of their difference covers the true difference in 93-97 % of them."""
    rng = np.random.default_rng(2026)
    covered = 0
    for draw in range(400):
        a, b = paired_hits(rng, 1000)
        interval = PairedBootstrap({"a": {"ImageNet": a}, "b": {"ImageNet": b}}, replicates=1000,
                                   seed=draw).difference("a", "b", "ImageNet").interval
        covered += interval.low <= TRUE_DIFFERENCE <= interval.high
    assert 0.93 <= covered / 400 <= 0.97, covered


def test_pairing_makes_the_interval_of_a_difference_narrower_than_unpaired_draws():
    rng = np.random.default_rng(1)
    a, b = paired_hits(rng, 2000)
    paired = PairedBootstrap({"a": {"ImageNet": a}, "b": {"ImageNet": b}}, replicates=2000).difference(
        "a", "b", "ImageNet").interval
    own_a = replicate_accuracies(a[:, None], 2000, [5])[:, 0]
    own_b = replicate_accuracies(b[:, None], 2000, [6])[:, 0]
    unpaired = np.quantile(own_a - own_b, [0.025, 0.975])
    assert paired.high - paired.low < 0.8 * (unpaired[1] - unpaired[0])


@pytest.mark.parametrize("only_a,only_b,both", [(0, 0, 5), (3, 0, 0), (7, 2, 40), (20, 20, 1), (120, 95, 900),
                                                (1, 30, 3), (2500, 2380, 40000)])
def test_mcnemar_p_values_equal_scipy_binomtest_on_the_discordant_pairs(only_a, only_b, both):
    a = np.array([True] * only_a + [False] * only_b + [True] * both + [False] * 11)
    b = np.array([False] * only_a + [True] * only_b + [True] * both + [False] * 11)
    test = mcnemar_exact(a, b)
    assert (test.only_a, test.only_b) == (only_a, only_b)
    expected = binomtest(min(only_a, only_b), only_a + only_b, 0.5).pvalue if only_a + only_b else 1.0
    assert test.p_value == pytest.approx(expected, rel=1e-9, abs=1e-300)


def test_same_seed_same_intervals_and_a_model_more_changes_no_other_interval():
    rng = np.random.default_rng(3)
    hits = {name: {"ImageNet": rng.random(500) < p} for name, p in (("a", 0.7), ("b", 0.6), ("c", 0.5))}
    two = PairedBootstrap({k: hits[k] for k in ("a", "b")}, replicates=300, seed=4)
    three = PairedBootstrap(hits, replicates=300, seed=4)
    assert two.interval("a", "ImageNet") == three.interval("a", "ImageNet")
    assert two.difference("a", "b", "ImageNet") == three.difference("a", "b", "ImageNet")
    assert PairedBootstrap(hits, replicates=300, seed=5).interval("a", "ImageNet") != three.interval("a", "ImageNet")


def test_avg_shifts_resamples_each_shift_on_its_own_and_needs_all_five():
    rng = np.random.default_rng(7)
    hits = {m: {s: rng.random(400) < p for s in SHIFTS} for m, p in (("a", 0.6), ("b", 0.55))}
    boot = PairedBootstrap(hits, replicates=500)
    draws = np.mean([boot._draws("a", s) for s in SHIFTS], axis=0)
    assert boot.interval("a", AVG_SHIFTS).low == pytest.approx(float(np.quantile(draws, 0.025)))
    correlations = np.corrcoef([boot._draws("a", s) for s in SHIFTS])
    assert np.abs(correlations[np.triu_indices(5, 1)]).max() < 0.2  # separate draws per shift
    difference = boot.difference("a", "b", AVG_SHIFTS)
    assert difference.mcnemar is None
    assert difference.estimate == pytest.approx(np.mean([hits["a"][s].mean() - hits["b"][s].mean() for s in SHIFTS]))
    del hits["b"][SHIFTS[0]]
    assert PairedBootstrap(hits, replicates=50).difference("a", "b", AVG_SHIFTS) is None


def test_hits_of_other_images_are_never_paired():
    a, b = np.ones(100, bool), np.zeros(100, bool)
    same = PairedBootstrap({"a": {"ImageNet": a}, "b": {"ImageNet": b}}, replicates=50)
    assert same.difference("a", "b", "ImageNet").significant
    changed = PairedBootstrap({"a": {"ImageNet": a}, "b": {"ImageNet": b}}, replicates=50,
                              identities={"a": {"ImageNet": "v1"}, "b": {"ImageNet": "v2"}})
    assert changed.difference("a", "b", "ImageNet") is None
    assert changed.interval("b", "ImageNet") is not None
