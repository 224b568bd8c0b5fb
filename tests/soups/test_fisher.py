"""Fisher-weighted averaging against closed forms: the diagonal Fisher of a linear softmax
classifier worked out by hand, the weighted mean on stacked tensors, equal Fishers as the
uniform soup; its cache (reused, resumed), its cost, the stage, and its memory against N."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from soups.test_kernels import LARGE, SMALL, TENSOR, model_file
from soups.test_stage import FakeRun, _cfg, _patch, pool  # noqa: F401  (pool is a fixture)
from torch import nn

import soup_exp.soups.fisher as fisher
from soup_exp.soup import run_soups
from soup_exp.soups import merge_tensors, resolve_ingredients
from soup_exp.soups.fisher import diagonal_fisher, fisher_kernel, label_generator
from soup_exp.soups.freshness import recorded_inputs
from soup_exp.soups.statistics import statistics_dir

N = 4


def _linear(seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(3, 4)


def _textbook_fisher(weight, bias, xs, generator):
    """WiSE-FT's estimate for ``softmax(W x + b)`` without autograd: the gradient of the
    cross-entropy at label y is ``(p - e_y) x^T`` for W and ``p - e_y`` for b."""
    fw, fb = torch.zeros_like(weight, dtype=torch.float64), torch.zeros_like(bias, dtype=torch.float64)
    for x in xs:
        p = torch.softmax(x @ weight.T + bias, dim=-1).view(1, -1)
        y = torch.multinomial(p, 1, generator=generator).item()
        r = p[0].double() - nn.functional.one_hot(torch.tensor(y), len(bias)).double()
        fw += torch.outer(r, x.double()) ** 2
        fb += r ** 2
    return {"weight": fw / len(xs), "bias": fb / len(xs)}


def test_the_diagonal_fisher_of_a_linear_classifier_is_the_hand_computed_one():
    model = _linear()
    weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    xs = torch.randn(24, 3, generator=torch.Generator().manual_seed(1))
    batches = [(xs[i:i + 5], torch.zeros(len(xs[i:i + 5]), dtype=torch.long)) for i in range(0, 24, 5)]
    got = diagonal_fisher(model, weights, batches, label_generator(0, "a"))
    expected = _textbook_fisher(weights["weight"], weights["bias"], xs, label_generator(0, "a"))
    assert set(got) == {"weight", "bias"}
    assert all(torch.allclose(got[k].double(), expected[k], atol=1e-6) for k in expected)
    again = diagonal_fisher(model, weights, batches, label_generator(0, "a"))
    assert all(torch.equal(got[k], again[k]) for k in got)  # the labels follow the seed and the name
    other = diagonal_fisher(model, weights, batches, label_generator(0, "b"))
    assert not torch.equal(got["bias"], other["bias"])


def test_the_sampled_fisher_converges_to_the_exact_expectation_over_labels():
    model = _linear(2)
    weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    x = torch.tensor([0.5, -1.0, 2.0])
    got = diagonal_fisher(model, weights, [(x.expand(3000, 3), torch.zeros(3000, dtype=torch.long))],
                          label_generator(0, "a"))
    p = torch.softmax(x @ weights["weight"].T + weights["bias"], dim=-1).double()
    # Matena & Raffel's exact Fisher of the bias: sum_y p_y (p - e_y)^2 = p (1 - p)^2 + (1 - p) p^2 = p (1 - p)
    exact_bias = p * (1 - p)
    assert torch.allclose(got["bias"].double(), exact_bias, rtol=0.1, atol=2e-3), (got["bias"], exact_bias)
    assert torch.allclose(got["weight"].double(), torch.outer(exact_bias, x.double() ** 2), rtol=0.1, atol=1e-2)


def _fisher_files(tmp_path, fishers):
    paths = []
    for i, f in enumerate(fishers):
        path = tmp_path / f"fisher_{i}.safetensors"
        save_file({k: v.contiguous() for k, v in f.items()}, str(path))
        paths.append(path)
    return resolve_ingredients(paths)


def _textbook_fisher_merge(models, fishers, floor, coefficients):
    out = {}
    for key in models[0]:
        w = torch.stack([m[key].double() for m in models])
        f = torch.stack([fi[key].double() if key in fi else torch.ones_like(m[key], dtype=torch.float64)
                         for fi, m in zip(fishers, models, strict=True)]).clamp(min=floor)
        c = torch.tensor(coefficients, dtype=torch.float64).view(-1, *[1] * (w.dim() - 1))
        out[key] = (c * f * w).sum(0) / (c * f).sum(0)
    return out


def test_the_fisher_merge_is_the_fisher_weighted_mean_of_stacked_tensors(tmp_path, make_sd):
    models = [make_sd(i) for i in range(N)]
    g = torch.Generator().manual_seed(5)
    fishers = [{k: torch.rand(v.shape, generator=g) * 3 for k, v in m.items() if k != "head.bias"} for m in models]
    fishers[0]["image_encoder.proj"][0, 0] = 0.0  # below the floor
    coefficients = [0.1, 0.2, 0.3, 0.4]
    out = merge_tensors(resolve_ingredients(models), fisher_kernel,
                        params={"fishers": _fisher_files(tmp_path, fishers), "coefficients": coefficients,
                                "floors": [1e-3] * N})
    expected = _textbook_fisher_merge(models, fishers, 1e-3, coefficients)
    assert all(torch.allclose(out[k].double(), expected[k], atol=1e-5, rtol=1e-5) for k in expected)
    mean_bias = torch.stack([m["head.bias"] for m in models]).mean(0)
    assert torch.allclose(out["head.bias"], torch.stack([m["head.bias"] * c for m, c in zip(models, coefficients, strict=True)])
                          .sum(0)) and not torch.allclose(out["head.bias"], mean_bias)  # no Fisher: weights c_i


def test_equal_fishers_give_the_uniform_soup(tmp_path, make_sd):
    models = [make_sd(i) for i in range(N)]
    same = {k: torch.rand(v.shape, generator=torch.Generator().manual_seed(3)) + 0.1 for k, v in models[0].items()}
    out = merge_tensors(resolve_ingredients(models), fisher_kernel,
                        params={"fishers": _fisher_files(tmp_path, [same] * N), "coefficients": [1 / N] * N,
                                "floors": [1e-8] * N})
    assert all(torch.allclose(out[k], torch.stack([m[k] for m in models]).mean(0), atol=1e-6) for k in out)


def test_favouring_the_target_floors_only_its_fisher(tmp_path):
    models = [{"w": torch.tensor([1.0, 1.0])}, {"w": torch.tensor([3.0, 3.0])}]
    fishers = [{"w": torch.tensor([0.0, 2.0])}, {"w": torch.tensor([0.0, 2.0])}]
    files = _fisher_files(tmp_path, fishers)
    both = merge_tensors(resolve_ingredients(models), fisher_kernel,
                         params={"fishers": files, "coefficients": [0.5, 0.5], "floors": [1e-6, 1e-6]})
    target = merge_tensors(resolve_ingredients(models), fisher_kernel,
                           params={"fishers": files, "coefficients": [0.5, 0.5], "floors": [0.0, 1e-6]})
    assert torch.allclose(both["w"], torch.tensor([2.0, 2.0]))  # all below the floor: the mean
    assert torch.allclose(target["w"], torch.tensor([3.0, 2.0]))  # the floored target takes the entry


def _cook(out, *extra):
    return run_soups(_cfg(out, ["fisher"], "recipes.fisher.batch_size=64", *extra), run=FakeRun())


def _record(made):
    return json.loads((made["fisher"] / "soup.json").read_text())


def test_the_stage_cooks_fisher_and_reuses_finished_fishers(pool, monkeypatch):  # noqa: F811
    out, evaluator = pool
    _patch(monkeypatch, evaluator)
    made = _cook(out)
    record = _record(made)
    assert record["label"] == "Fisher merging" and record["fishers_computed"] == [f"ft_{i}" for i in range(5)]
    assert record["params"] == {"examples": None, "batch_size": 64, "fisher_floor": 1e-8, "favor_target": False,
                                "normalize": False}
    # one held-out pass per ingredient; each read once for its Fisher, then it and its Fisher by the merge
    assert record["cost"]["held_out_passes"] == 5 and record["cost"]["ingredient_reads"] == pytest.approx(15)
    cache = statistics_dir(made["fisher"].parent, "fisher")
    files = sorted(cache.glob("*.safetensors"))
    assert len(files) == 5
    models = [load_file(out / "ingredients" / f"ft_{i}" / "model.safetensors") for i in range(5)]
    fishers = [load_file(next(cache.glob(f"ft_{i}-*.safetensors"))) for i in range(5)]
    expected = _textbook_fisher_merge(models, fishers, 1e-8, [0.2] * 5)
    got = load_file(made["fisher"] / "model.safetensors")
    assert all(torch.allclose(got[k].double(), expected[k], atol=1e-5, rtol=1e-5) for k in expected)

    again = _record(_cook(out, "recipes.fisher.fisher_floor=1e-6"))  # another merge of the same Fishers
    assert again["fishers_reused"] == [f"ft_{i}" for i in range(5)] and again["fishers_computed"] == []
    assert again["cost"]["held_out_passes"] == 0 and again["cost"]["ingredient_reads"] == pytest.approx(10)
    # no pass ran, yet the Fishers' labels follow the seed: a new seed must make this soup stale
    assert recorded_inputs(made["fisher"] / "soup.json")["seed"] == 0
    assert sorted(cache.glob("*.safetensors")) == files

    _record(_cook(out, "recipes.fisher.examples=50"))  # another estimate: new files beside the old
    assert len(list(cache.glob("*.safetensors"))) == 10


def test_an_interrupted_fisher_pass_redoes_only_the_ingredient_it_was_on(pool, monkeypatch):  # noqa: F811
    out, evaluator = pool
    _patch(monkeypatch, evaluator)
    real, calls = fisher.diagonal_fisher, []

    def preempted_on_the_third(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt("preempted")
        return real(*args, **kwargs)

    monkeypatch.setattr(fisher, "diagonal_fisher", preempted_on_the_third)
    with pytest.raises(KeyboardInterrupt):
        _cook(out)
    monkeypatch.setattr(fisher, "diagonal_fisher", real)
    record = _record(_cook(out))
    assert record["fishers_reused"] == ["ft_0", "ft_1"] and record["fishers_computed"] == ["ft_2", "ft_3", "ft_4"]
    assert record["cost"]["held_out_passes"] == 3


def test_favor_target_and_normalize_cook_and_name_the_target(pool, monkeypatch):  # noqa: F811
    out, evaluator = pool
    _patch(monkeypatch, evaluator)
    record = _record(_cook(out, "recipes.fisher.favor_target=true", "recipes.fisher.normalize=true"))
    scores = {f"ft_{i}": json.loads((out / "ingredients" / f"ft_{i}" / "ingredient.json").read_text())
              .get("held_out_accuracy") for i in range(5)}
    assert record["target"] in scores and record["fishers_computed"]


# A fresh process per measure (see tests/soups/test_kernels.py): its VmHWM is this merge's.
CHILD = """
import json, re, sys, torch
from soup_exp.soups import merge_tensors, resolve_ingredients
from soup_exp.soups.freshness import recorded_inputs
from soup_exp.soups.fisher import fisher_kernel
torch.set_num_threads(1)
files = sys.argv[1:]
half = len(files) // 2
models, fishers = resolve_ingredients(files[:half]), resolve_ingredients(files[half:])
merge_tensors(models, fisher_kernel, params={"fishers": fishers, "coefficients": [1 / half] * half,
                                             "floors": [1e-8] * half})
print(int(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) * 1024)
"""


def _peak(models: list[Path], fishers: list[Path]) -> int:
    done = subprocess.run([sys.executable, "-c", CHILD, *map(str, models), *map(str, fishers)],
                          capture_output=True, text=True, check=True,
                          env={**os.environ, "MALLOC_MMAP_THRESHOLD_": str(64 * 1024)})
    return int(done.stdout.split()[-1])


@pytest.mark.slow
def test_the_fisher_merge_peak_memory_does_not_grow_with_the_number_of_ingredients(tmp_path):
    models = [model_file(tmp_path / f"ft_{i}.safetensors", i) for i in range(LARGE)]
    fishers = [model_file(tmp_path / f"fisher_{i}.safetensors", 100 + i) for i in range(LARGE)]
    peaks = {n: _peak(models[:n], fishers[:n]) for n in (SMALL, LARGE)}
    assert peaks[LARGE] - peaks[SMALL] < TENSOR * 4, peaks  # 7 more ingredients and Fishers: not one more tensor
