"""The merges beyond the paper (task arithmetic, TIES, DARE, SLERP) against textbook
implementations on whole stacked state dicts, their seeds, their errors and their memory."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file
from soups.test_kernels import LARGE, SMALL, TENSOR, model_file, peak_bytes
from soups.test_stage import FakeRun, _cfg, _patch, pool  # noqa: F401  (pool is a fixture)

from soup_exp.errors import ConfigError
from soup_exp.soup import run_soups
from soup_exp.soups import merge_tensors, resolve_ingredients
from soup_exp.soups.dare import dare
from soup_exp.soups.slerp import slerp_kernel, slerp_tensors
from soup_exp.soups.task_arithmetic import task_arithmetic
from soup_exp.soups.ties import ties, trimmed

N = 4


def _merge(fn, sds, start, **params):
    return merge_tensors(resolve_ingredients(sds), fn, base=resolve_ingredients(start)[0], params=params)


def _stacked_tasks(models, start, key):
    return torch.stack([m[key].double() - start[key].double() for m in models]).flatten(1)


def _textbook_disjoint_merge(tasks: torch.Tensor) -> torch.Tensor:
    """TIES' steps 2 and 3 on stacked task vectors (rows), as the paper's equations write them."""
    elected = tasks.sum(0).sign()
    agree = (tasks.sign() == elected) & (tasks != 0)
    return (tasks * agree).sum(0) / agree.sum(0).clamp(min=1)


def _textbook_ties(models, start, k, scale):
    out = {}
    for key in start:
        tasks = _stacked_tasks(models, start, key)
        keep = max(1, round(k / 100 * tasks.shape[1]))
        top = tasks.abs().topk(keep, dim=1).indices
        kept = torch.zeros_like(tasks).scatter_(1, top, tasks.gather(1, top))
        out[key] = start[key].double() + scale * _textbook_disjoint_merge(kept).view(start[key].shape)
    return out


# Tolerances: the references work in float64 on stacked tensors, the kernels in float32 on
# streamed running sums, so the two agree to float32 rounding, not bit for bit.
def _close(got: dict, expected: dict) -> bool:
    return list(got) == list(expected) and all(
        torch.allclose(got[k].double(), expected[k], atol=1e-5, rtol=1e-5) for k in expected)


def test_task_arithmetic_is_the_base_plus_the_scaled_sum_of_task_vectors(make_sd):
    sds, start = [make_sd(i) for i in range(N)], make_sd(9)
    expected = {k: start[k].double() + 0.3 * _stacked_tasks(sds, start, k).sum(0).view(start[k].shape)
                for k in start}
    assert _close(_merge(task_arithmetic.fn, sds, start, scale=0.3), expected)


def test_task_arithmetic_at_one_over_n_is_the_uniform_soup(make_sd):
    sds, start = [make_sd(i) for i in range(N)], make_sd(9)
    out = _merge(task_arithmetic.fn, sds, start, scale=1 / N)
    assert _close(out, {k: torch.stack([sd[k].double() for sd in sds]).mean(0) for k in start})


def test_ties_trims_elects_and_takes_the_disjoint_mean_as_the_paper_does(make_sd):
    sds, start = [make_sd(i) for i in range(N)], make_sd(9)
    for k, scale in ((20, 1.0), (50, 0.7), (100, 1.0)):
        assert _close(_merge(ties.fn, sds, start, k=k, scale=scale), _textbook_ties(sds, start, k, scale))


def test_ties_on_values_worked_out_by_hand():
    start = {"w": torch.zeros(4)}
    models = [{"w": torch.tensor([3.0, -1.0, 0.5, 2.0])}, {"w": torch.tensor([-2.0, 4.0, 0.1, 1.0])},
              {"w": torch.tensor([-1.0, -3.0, 0.2, -5.0])}]
    # k = 50 keeps each model's two largest: [3, 0, 0, 2], [-2, 4, 0, 0], [0, -3, 0, -5]
    assert torch.equal(trimmed(models[0]["w"], 50), torch.tensor([3.0, 0.0, 0.0, 2.0]))
    # sums [1, 1, 0, -3]: signs + + 0 -; agreeing means [3, 4, 0 (none), -5]
    out = _merge(ties.fn, models, start, k=50, scale=1.0)
    assert torch.equal(out["w"], torch.tensor([3.0, 4.0, 0.0, -5.0]))


def _textbook_dare(models, start, p, seed, merge, scale):
    """DARE from its definition: a Bernoulli(1 - p) mask per entry, survivors times 1 / (1 - p)."""
    from soup_exp.soups.dare import drop_generator

    out = {}
    for key in start:
        masks = [torch.rand(start[key].shape, generator=drop_generator(seed, i, key)).flatten() >= p
                 for i in range(len(models))]
        tasks = _stacked_tasks(models, start, key) * torch.stack(masks) / (1 - p)
        merged = tasks.sum(0) if merge == "task_arithmetic" else _textbook_disjoint_merge(tasks)
        out[key] = start[key].double() + scale * merged.view(start[key].shape)
    return out


@pytest.mark.parametrize("merge", ["task_arithmetic", "ties"])
def test_dare_drops_rescales_and_merges_as_its_definition(make_sd, merge):
    sds, start = [make_sd(i) for i in range(N)], make_sd(9)
    out = _merge(dare.fn, sds, start, p=0.5, merge=merge, scale=0.3, seed=7)
    assert _close(out, _textbook_dare(sds, start, 0.5, 7, merge, 0.3))


def test_dare_keeps_each_entry_in_expectation():
    start, model = {"w": torch.zeros(200_000)}, {"w": torch.full((200_000,), 2.0)}
    out = _merge(dare.fn, [model], start, p=0.9, merge="task_arithmetic", scale=1.0, seed=0)["w"]
    assert set(out.unique().tolist()) == {0.0, 20.0}
    # mean of 200k draws of 20 * Bernoulli(0.1): standard error 20 * sqrt(0.09 / 200k) ~ 0.013
    assert math.isclose(out.mean().item(), 2.0, abs_tol=0.06)


def test_dare_is_a_function_of_its_seed_not_of_the_read(make_sd):
    sds, start = [make_sd(i) for i in range(N)], make_sd(9)
    params = {"p": 0.5, "merge": "ties", "scale": 1.0}
    first = _merge(dare.fn, sds, start, seed=1, **params)
    again = merge_tensors(resolve_ingredients(sds), dare.fn, base=resolve_ingredients(start)[0],
                          params={"seed": 1, **params}, prefetch=False)
    assert all(torch.equal(first[k], again[k]) for k in first)
    one_tensor = {k: v for k, v in sds[0].items() if k == "head.bias"}
    alone = _merge(dare.fn, [one_tensor], {"head.bias": start["head.bias"]}, seed=1, **params)
    with_others = _merge(dare.fn, [sds[0]], start, seed=1, **params)
    assert torch.equal(alone["head.bias"], with_others["head.bias"])  # a tensor's mask ignores the others read
    other = _merge(dare.fn, sds, start, seed=2, **params)
    assert not all(torch.equal(first[k], other[k]) for k in first)
    # the mask follows the ingredient's position: the same pool in another order is another soup
    reordered = _merge(dare.fn, sds[::-1], start, seed=1, **params)
    assert not all(torch.equal(first[k], reordered[k]) for k in first)


def _textbook_slerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    a64, b64 = a.double().flatten(), b.double().flatten()
    theta = torch.arccos(torch.dot(a64 / a64.norm(), b64 / b64.norm()))
    out = (torch.sin((1 - t) * theta) * a64 + torch.sin(t * theta) * b64) / torch.sin(theta)
    return out.view(a.shape)


def test_slerp_follows_the_great_circle_and_ends_at_the_models(make_sd):
    a, b = make_sd(0), make_sd(1)
    for t in (0.0, 0.25, 0.5, 1.0):
        out = merge_tensors(resolve_ingredients([a, b]), slerp_kernel, params={"t": t})
        assert _close(out, {k: _textbook_slerp(a[k], b[k], t) for k in a})
    assert all(torch.equal(merge_tensors(resolve_ingredients([a, b]), slerp_kernel, params={"t": 0.0})[k], a[k])
               for k in a)
    unit_x, unit_y = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    half = slerp_tensors(unit_x, unit_y, 0.5)
    assert torch.allclose(half, torch.tensor([math.sqrt(0.5), math.sqrt(0.5)]))  # on the circle, not the chord


def test_slerp_of_nearly_colinear_tensors_is_linear():
    a = torch.tensor([1.0, 2.0, 3.0])
    b = 2.0 * a + torch.tensor([0.0, 1e-3, 0.0])
    assert torch.equal(slerp_tensors(a, b, 0.25), (a * 0.75).add_(b, alpha=0.25))


def test_the_merges_cook_through_the_soup_stage(pool, monkeypatch):  # noqa: F811
    out, evaluator = pool
    _patch(monkeypatch, evaluator)
    recipes = ["task_arithmetic", "ties_merging", "dare", "slerp"]
    made = run_soups(_cfg(out, recipes, "recipes.task_arithmetic.base=zeroshot", "recipes.ties_merging.base=zeroshot",
                          "recipes.dare.base=zeroshot", "recipes.dare.merge=ties", "recipes.dare.p=0.5"),
                     run=FakeRun())
    assert set(made) == set(recipes)
    records = {name: json.loads((made[name] / "soup.json").read_text()) for name in recipes}
    assert records["ties_merging"]["params"] == {"base": "zeroshot", "k": 20, "scale": 1.0}
    assert records["ties_merging"]["label"] == "TIES merging" and records["dare"]["base"] == "zeroshot"
    models = [load_file(out / "ingredients" / f"ft_{i}" / "model.safetensors") for i in range(5)]
    zeroshot = load_file(out / "zeroshot" / "model.safetensors")
    assert _close(load_file(made["ties_merging"] / "model.safetensors"), _textbook_ties(models, zeroshot, 20, 1.0))
    assert _close(load_file(made["dare"] / "model.safetensors"),
                  _textbook_dare(models, zeroshot, 0.5, 0, "ties", 0.3))
    assert len(records["slerp"]["ingredients"]) == 2 and records["slerp"]["coefficients"] == [0.5, 0.5]


def test_slerp_of_three_models_and_a_parameter_out_of_range_are_one_line(pool, monkeypatch):  # noqa: F811
    out, evaluator = pool
    _patch(monkeypatch, evaluator)
    with pytest.raises(ConfigError, match=r"^recipes\.slerp\.models: SLERP interpolates exactly two models, "
                                          r"got 3 \(ft_0, ft_1, ft_3\)$"):
        run_soups(_cfg(out, ["slerp"], "recipes.slerp.models=[ft_0,ft_1,ft_3]"), run=FakeRun())
    with pytest.raises(ConfigError, match=r"recipes\.dare\.p=1\.0: expected a value in \[0, 1\)"):
        run_soups(_cfg(out, ["dare"], "recipes.dare.p=1.0"), run=FakeRun())
    with pytest.raises(ConfigError, match=r"recipes\.ties_merging\.k=0: expected a value in \(0, 100\]"):
        run_soups(_cfg(out, ["ties_merging"], "recipes.ties_merging.k=0"), run=FakeRun())
    with pytest.raises(ConfigError, match=r"recipes\.dare\.merge='dare'"):
        run_soups(_cfg(out, ["dare"], "recipes.dare.merge=dare"), run=FakeRun())


@pytest.mark.slow
def test_the_built_in_ties_peak_memory_does_not_grow_with_the_number_of_ingredients(tmp_path):
    base = model_file(tmp_path / "base.safetensors", 100)
    files = [model_file(tmp_path / f"ft_{i}.safetensors", i) for i in range(LARGE)]
    peaks = {n: peak_bytes(files[:n], base, "soup_exp.soups.ties:ties", {"k": 20, "scale": 1.0})
             for n in (SMALL, LARGE)}
    assert peaks[LARGE] - peaks[SMALL] < TENSOR * 4, peaks  # 7 more ingredients: not one more tensor
