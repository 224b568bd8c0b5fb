"""The error landscape: the plane's geometry, and its values at the models it goes through."""

from __future__ import annotations

import csv
import math

import pytest
import torch

from soup_exp.analysis.landscape import Plane, landscape_analysis
from soup_exp.errors import ConfigError
from soup_exp.soups.ingredients import resolve_ingredients


def test_plane_coordinates_and_weights_round_trip():
    origin = {"w": torch.zeros(3)}
    a = {"w": torch.tensor([3.0, 0.0, 0.0])}
    b = {"w": torch.tensor([1.0, 2.0, 0.0])}
    plane = Plane.through(*resolve_ingredients([origin, a, b]))
    assert (plane.norm_a, plane.xb, plane.yb) == pytest.approx((3.0, 1.0, 2.0))
    assert plane.weights(0, 0) == pytest.approx((1, 0, 0))
    assert plane.weights(3, 0) == pytest.approx((0, 1, 0))
    assert plane.weights(1, 2) == pytest.approx((0, 0, 1))
    for x, y in [(0.3, -0.7), (2.5, 1.1)]:
        assert plane.position(*plane.weights(x, y)) == pytest.approx((x, y))
    grid = plane.grid(5, margin=0.0, aspect=2 / 3)  # the models fill the grid exactly
    xs, ys = [p[0] for p in grid], [p[1] for p in grid]
    assert (min(xs), max(xs)) == pytest.approx((0, 3)) and (min(ys), max(ys)) == pytest.approx((0, 2))
    assert grid[1][1] == grid[0][1] and grid[5][0] == grid[0][0]  # row-major, x fastest
    wide = plane.grid(5, margin=0.0, aspect=1.0)  # the shorter side grows about its centre
    assert (min(p[1] for p in wide), max(p[1] for p in wide)) == pytest.approx((-0.5, 2.5))


def test_collinear_models_span_no_plane():
    line = [{"w": torch.zeros(2)}, {"w": torch.tensor([1.0, 1.0])}, {"w": torch.tensor([2.0, 2.0])}]
    with pytest.raises(ConfigError, match="span no plane"):
        Plane.through(*resolve_ingredients(line))


def test_the_landscape_at_the_three_models_is_their_evaluated_error_and_loss(context, world):
    ctx = context("landscape")
    numbers = landscape_analysis(ctx, origin="zeroshot", models=["ft_1", "ft_3"], grid=3, margin=0.1,
                                 error_on="ImageNet2p", train_images=60, seed=0)
    rows = list(csv.DictReader(ctx.store.out("landscape_error").with_suffix(".csv").open()))
    assert len(rows) == 9 + 4
    marked = {r["role"]: r for r in rows if r["role"] != "grid"}
    assert [marked[r]["name"] for r in ("origin", "model_a", "model_b")] == ["zeroshot", "ft_1", "ft_3"]
    train_eval = world.evaluator([world.train])
    for role, model in (("origin", ctx.pool.zeroshot), ("model_a", ctx.pool.model("ft_1")), ("model_b", ctx.pool.model("ft_3"))):
        accuracy = ctx.suite.accuracies(model, ["ImageNet2p"])["ImageNet2p"]
        assert float(marked[role]["error"]) == 1 - accuracy
        assert numbers[f"{role}_error"] == 1 - accuracy
        net = ctx.judge.skeleton
        net.load_state_dict(model.state_dict())
        loss = torch.nn.functional.cross_entropy(train_eval.logits(net, "Train"), world.train.targets)
        assert numbers[f"{role}_train_loss"] == pytest.approx(float(loss), rel=1e-6)
    assert float(marked["model_a"]["x"]) > 0 and float(marked["model_a"]["y"]) == 0
    assert float(marked["midpoint"]["w_a"]) == float(marked["midpoint"]["w_b"]) == 0.5
    assert math.isclose(numbers["midpoint_error_gain"],
                        (numbers["model_a_error"] + numbers["model_b_error"]) / 2 - numbers["midpoint_error"])
    loss_rows = list(csv.DictReader(ctx.store.out("landscape_train_loss").with_suffix(".csv").open()))
    assert [r["train_loss"] for r in loss_rows if r["role"] == "model_a"] == [str(numbers["model_a_train_loss"])]


class Preempted(Exception):
    pass


def test_an_interrupted_landscape_resumes_where_it_stopped(context, monkeypatch):
    from soup_exp.analysis import landscape

    ctx = context("landscape")
    calls = []
    real = landscape._metrics

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5 and not resumed:
            raise Preempted
        return real(*args, **kwargs)

    resumed = False

    monkeypatch.setattr(landscape, "_metrics", flaky)
    params = dict(origin="auto", models=None, grid=3, margin=0.2, error_on="ImageNet", train_images=60, seed=0)
    with pytest.raises(Preempted):
        landscape_analysis(ctx, **params)
    assert len(ctx.store.partial()) == 4
    calls.clear()
    resumed = True
    numbers = landscape_analysis(ctx, **params)
    assert len(calls) == 13 - 4 and numbers["origin"] == "lp_init"
    assert numbers["models"] == [ctx.pool.names[i] for i in sorted(range(4), key=lambda i: -ctx.pool.scores[i])[:2]]


def test_a_pool_with_one_fine_tune_has_no_landscape_and_says_so(context, world, caplog):
    ingredients = world.out / "ingredients"
    ctx = context("landscape", f"soup.pool=[{ingredients / 'lp_init'},{ingredients / 'ft_0'}]")
    with caplog.at_level("WARNING"):
        numbers = landscape_analysis(ctx, origin="auto", models=None, grid=3, margin=0.1, error_on="ImageNet2p",
                                     train_images=60, seed=0)
    assert numbers == {"models": []} and ctx.store.outputs == []
    assert "fewer than two fine-tuned models besides lp_init" in caplog.text
