"""Angles between fine-tuning directions, and the pairwise soup and ensemble gains."""

from __future__ import annotations

import csv
import math

import pytest
import torch

from soup_exp.analysis.angles import (
    angles_analysis,
    angles_degrees,
    choose_pairs,
    differs_in,
    direction_gram,
)
from soup_exp.soups.ingredients import resolve_ingredients

SHAPES = {"image_encoder.w": (6, 5), "image_encoder.b": (7,), "head.weight": (3, 4), "steps": ()}


def _split(vector: torch.Tensor, base: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A flat vector laid out over the floating tensors of ``base``, added to ``base``."""
    out, offset = {}, 0
    for key, tensor in base.items():
        if not tensor.is_floating_point():
            out[key] = tensor.clone()
            continue
        out[key] = tensor + vector[offset:offset + tensor.numel()].view_as(tensor)
        offset += tensor.numel()
    return out


def _pair_with_angle(theta_deg: float, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    init = {k: torch.randn(s, generator=g) if s else torch.tensor(7) for k, s in SHAPES.items()}
    n = sum(t.numel() for t in init.values() if t.is_floating_point())
    u = torch.randn(n, generator=g, dtype=torch.float64)
    v = torch.randn(n, generator=g, dtype=torch.float64)
    u /= u.norm()
    v -= (v @ u) * u
    v /= v.norm()
    theta = math.radians(theta_deg)
    a = 0.3 * u
    b = 1.7 * (math.cos(theta) * u + math.sin(theta) * v)
    return init, _split(a.float(), init), _split(b.float(), init)


@pytest.mark.parametrize("theta", [5.0, 45.0, 90.0, 137.0])
def test_the_angle_of_a_pair_built_with_a_known_angle(theta):
    init, a, b = _pair_with_angle(theta)
    ings = resolve_ingredients([init, a, b])
    gram = direction_gram(ings[0], ings[1:])
    assert float(angles_degrees(gram)[0, 1]) == pytest.approx(theta, abs=1e-3)
    assert float(gram[0, 0]) == pytest.approx(0.3**2, rel=1e-5)  # squared length of a's direction


def test_the_gram_matrix_in_blocks_equals_the_whole(tmp_path):
    from safetensors.torch import save_file

    init, a, b = _pair_with_angle(60.0)
    _, c, d = _pair_with_angle(20.0, seed=1)
    paths = []
    for name, sd in {"init": init, "a": a, "b": b, "c": c, "d": d}.items():
        save_file(sd, str(tmp_path / f"{name}.safetensors"))
        paths.append(tmp_path / f"{name}.safetensors")
    ings = resolve_ingredients(paths)
    whole = direction_gram(ings[0], ings[1:])
    blocks = direction_gram(ings[0], ings[1:], budget_bytes=16 * 8)  # one ingredient per block
    assert torch.allclose(whole, blocks, rtol=1e-12, atol=1e-12)
    assert torch.allclose(whole, whole.T)
    assert float(angles_degrees(whole)[0, 1]) == pytest.approx(60.0, abs=1e-3)


def test_differs_in_names_the_one_hyperparameter_a_pair_differs_in():
    assert differs_in({"lr": 1, "wd": 0}, {"lr": 2, "wd": 0}) == "lr"
    assert differs_in({"lr": 1, "wd": 0}, {"lr": 2, "wd": 1}) == "several"
    assert differs_in({"lr": 1}, {"lr": 1}) == "none"
    assert differs_in({}, {}) == "not recorded"
    assert differs_in({"lr": 1}, {"lr": 1, "aug": "rand-m9"}) == "aug"


def test_pairs_are_all_or_a_seeded_sample():
    assert choose_pairs(4, None, 0) == [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    sample = choose_pairs(10, 7, seed=3)
    assert len(sample) == 7 == len(set(sample)) and sample == sorted(sample) == choose_pairs(10, 7, seed=3)
    assert choose_pairs(10, 7, seed=4) != sample


def test_angles_analysis_on_a_pool(context):
    ctx = context("angles")
    numbers = angles_analysis(ctx, init="auto", metric="ImageNet", max_pairs=None, seed=0)
    assert numbers["initialisation"] == "lp_init" and numbers["pairs"] == 6  # the LP init is not paired
    rows = list(csv.DictReader(ctx.store.out("soup_gain_vs_angle").with_suffix(".csv").open()))
    assert len(rows) == 6
    by_pair = {(r["a"], r["b"]): r for r in rows}
    assert by_pair[("ft_0", "ft_1")]["differs_in"] == "lr" and by_pair[("ft_0", "ft_3")]["differs_in"] == "several"
    assert by_pair[("ft_1", "ft_2")]["differs_in"] == "wd"
    ft = {ing.name: ing for ing in ctx.pool.ingredients}
    for r in rows:
        a, b = ft[r["a"]], ft[r["b"]]
        endpoints = (ctx.suite.accuracies(a, ["ImageNet"])["ImageNet"] + ctx.suite.accuracies(b, ["ImageNet"])["ImageNet"]) / 2
        assert float(r["soup_gain"]) == pytest.approx(float(r["soup_accuracy"]) - endpoints, abs=1e-9)
        ensemble = ctx.suite.ensemble_accuracies([a, b], ["ImageNet"])["ImageNet"]
        assert float(r["ensemble_gain"]) == pytest.approx(ensemble - endpoints, abs=1e-9)
        assert 0 < float(r["angle_deg"]) < 180
    # the soup of a pair, cooked and evaluated independently
    from soup_exp.soups.uniform import uniform_soup

    soup = uniform_soup([ft["ft_0"], ft["ft_1"]], arithmetic=ctx.arithmetic)
    model = ctx.judge.skeleton
    model.load_state_dict(soup)
    accuracy = ctx.suite.evaluator.evaluate({"soup": model}, ["ImageNet"])["soup"]["ImageNet"]
    assert float(by_pair[("ft_0", "ft_1")]["soup_accuracy"]) == pytest.approx(accuracy, abs=1e-12)
    assert {p.suffix for p in ctx.store.outputs} == {".png", ".pdf", ".csv"} and len(ctx.store.outputs) == 6
