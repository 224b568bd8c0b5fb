"""RegMean against closed forms: the least-squares merge of stacked layer inputs, the Grams
worked out from each layer's inputs, open_clip's attention projections (whose inputs a
hook has to recompute); its cache (reused, resumed), its cost, the stage, and its memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from soups.test_stage import FakeRun, Tiny, _cfg, _patch, pool  # noqa: F401  (pool is a fixture)
from torch import nn

import soup_exp.soups.regmean as regmean
from soup_exp.errors import ConfigError
from soup_exp.models.classifier import build_classifier
from soup_exp.soup import run_soups
from soup_exp.soups import merge_tensors, resolve_ingredients
from soup_exp.soups.regmean import (
    attention_output_before_projection,
    input_grams,
    reduced_off_diagonal,
    regmean_kernel,
)
from soup_exp.soups.statistics import statistics_dir

LINEAR_KEYS = ("image_encoder.0.weight", "head.weight")


def _layer_inputs(sd, x):
    """Each linear layer's inputs under the Tiny model ``sd`` (Linear -> tanh -> Linear)."""
    hidden = torch.tanh(x.double() @ sd["image_encoder.0.weight"].double().T + sd["image_encoder.0.bias"].double())
    return {"image_encoder.0.weight": x.double(), "head.weight": hidden}


def _textbook_regmean(models, x, alpha):
    """alpha = 1: least squares on the stacked inputs and outputs of every model; else the
    paper's formula on Grams with off-diagonals times alpha. Other tensors: the mean."""
    out = {k: torch.stack([m[k].double() for m in models]).mean(0) for k in models[0]}
    for key in LINEAR_KEYS:
        inputs = [_layer_inputs(m, x)[key] for m in models]
        if alpha == 1.0:
            stacked_x = torch.cat(inputs)
            stacked_y = torch.cat([xi @ m[key].double().T for xi, m in zip(inputs, models, strict=True)])
            out[key] = torch.linalg.lstsq(stacked_x, stacked_y).solution.T
        else:
            grams = [xi.T @ xi / len(xi) for xi in inputs]
            grams = [alpha * g + (1 - alpha) * torch.diag(torch.diag(g)) for g in grams]
            rhs = sum(g @ m[key].double().T for g, m in zip(grams, models, strict=True))
            out[key] = torch.linalg.solve(sum(grams), rhs).T
    return out


def _close(got, expected, tol=1e-4):
    return list(got) == list(expected) and all(
        torch.allclose(got[k].double(), expected[k], atol=tol, rtol=tol) for k in expected)


def _tiny_models(n):
    models = []
    for i in range(n):
        torch.manual_seed(i)
        models.append({k: v.detach().clone() for k, v in Tiny().state_dict().items()})
    return models


def test_the_grams_are_the_mean_products_of_each_layers_inputs():
    model, sd = Tiny(), _tiny_models(1)[0]
    x = torch.randn(40, 6, generator=torch.Generator().manual_seed(0))
    grams = input_grams(model, sd, [(x[:25], None), (x[25:], None)])
    assert set(grams) == set(LINEAR_KEYS)
    for key, inputs in _layer_inputs(sd, x).items():
        assert torch.allclose(grams[key].double(), inputs.T @ inputs / len(inputs), atol=1e-5)


@pytest.mark.parametrize("alpha", [1.0, 0.1])
def test_regmean_of_a_tiny_network_is_the_least_squares_merge(tmp_path, alpha):
    models, model = _tiny_models(3), Tiny()
    x = torch.randn(64, 6, generator=torch.Generator().manual_seed(1))
    grams = []
    for i, sd in enumerate(models):
        path = tmp_path / f"gram_{i}.safetensors"
        save_file(input_grams(model, sd, [(x, None)]), str(path))
        grams.append(path)
    out = merge_tensors(resolve_ingredients(models), regmean_kernel,
                        params={"grams": resolve_ingredients(grams), "alpha": alpha})
    expected = _textbook_regmean(models, x, alpha)
    assert _close(out, expected)
    # the first layer sees the same images under every model: its merge is the mean
    assert torch.allclose(out["image_encoder.0.weight"], torch.stack([m["image_encoder.0.weight"] for m in models])
                          .mean(0), atol=1e-5)


def test_reducing_the_off_diagonal_keeps_the_diagonal():
    gram = torch.tensor([[4.0, 2.0], [2.0, 3.0]])
    assert torch.equal(reduced_off_diagonal(gram, 0.1), torch.tensor([[4.0, 0.2], [0.2, 3.0]]))
    assert torch.equal(reduced_off_diagonal(gram, 1.0), gram)


@pytest.mark.parametrize("mask", [None, "causal_float", "causal_bool"])
@pytest.mark.parametrize("batch_first", [True, False])
def test_the_recomputed_attention_output_is_what_out_proj_multiplies(mask, batch_first):
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(16, 4, batch_first=batch_first).eval()
    x = torch.randn(3, 5, 16) if batch_first else torch.randn(5, 3, 16)
    attn_mask = None
    if mask == "causal_bool":
        attn_mask = torch.ones(5, 5, dtype=torch.bool).triu(1)
    elif mask == "causal_float":
        attn_mask = torch.full((5, 5), float("-inf")).triu(1)
    with torch.no_grad():
        expected = mha(x, x, x, need_weights=False, attn_mask=attn_mask)[0]
        before = attention_output_before_projection(mha, x, attn_mask)
        got = nn.functional.linear(before, mha.out_proj.weight, mha.out_proj.bias)
    if not batch_first:
        got = got.transpose(0, 1)
    assert torch.allclose(got, expected, atol=1e-5)


def _tiny_vit():
    model, _ = build_classifier({"source": "open_clip", "name": "soup-tiny-vit", "pretrained": None}, 5)
    return model.eval()


def test_open_clip_vit_grams_serve_every_linear_and_attention_projection():
    model = _tiny_vit()
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    seen = {}
    block = model.image_encoder.transformer.resblocks[0]
    handle = block.ln_1.register_forward_hook(lambda m, a, out: seen.setdefault("ln_1", out))
    grams = input_grams(model, sd, [(images, None)])
    handle.remove()
    expected_keys = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    expected_keys |= {f"{n}.in_proj_weight" for n, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)}
    assert set(grams) == expected_keys and len(expected_keys) == 3 * 4 + 1  # 3 blocks: in, out, fc, proj; the head
    for key, gram in grams.items():
        assert gram.shape == (sd[key].shape[1],) * 2, key
    rows = seen["ln_1"].reshape(-1, seen["ln_1"].shape[-1]).double()
    in_proj = "image_encoder.transformer.resblocks.0.attn.in_proj_weight"
    assert torch.allclose(grams[in_proj].double(), rows.T @ rows / len(rows), atol=1e-4)


def test_regmean_of_copies_of_one_vit_is_that_vit():
    model = _tiny_vit()
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    images = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    gram = input_grams(model, sd, [(images, None)])
    out = merge_tensors(resolve_ingredients([sd, sd, sd]), regmean_kernel,
                        params={"grams": resolve_ingredients([gram, gram, gram]), "alpha": 0.5})
    assert all(torch.allclose(out[k], sd[k], atol=1e-4) for k in sd if sd[k].is_floating_point())


def test_cross_attention_is_refused_by_name():
    class Cross(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.MultiheadAttention(8, 2, batch_first=True)

        def forward(self, x):
            return self.attn(x, x.flip(1), x.flip(1), need_weights=False)[0]

    model = Cross()
    with pytest.raises(ConfigError, match=r"^RegMean: attention 'attn' is called with different query, key and value"):
        input_grams(model, model.state_dict(), [(torch.randn(2, 3, 8), None)])


def _cook(out, *extra):
    return run_soups(_cfg(out, ["regmean"], "recipes.regmean.batch_size=64", *extra), run=FakeRun())


def _record(made):
    return json.loads((made["regmean"] / "soup.json").read_text())


def test_the_stage_cooks_regmean_and_reuses_finished_grams(pool, monkeypatch):  # noqa: F811
    out, evaluator = pool
    _patch(monkeypatch, evaluator)
    made = _cook(out, "recipes.regmean.alpha=1.0")
    record = _record(made)
    assert record["label"] == "RegMean" and record["params"] == {"alpha": 1.0, "examples": None, "batch_size": 64}
    assert record["grams_computed"] == [f"ft_{i}" for i in range(5)] and record["regmean_tensors"] == sorted(LINEAR_KEYS)
    models = [load_file(out / "ingredients" / f"ft_{i}" / "model.safetensors") for i in range(5)]
    assert _close(load_file(made["regmean"] / "model.safetensors"), _textbook_regmean(models, evaluator.x, 1.0))
    model_floats, gram_floats = sum(v.numel() for v in models[0].values()), 6 * 6 + 12 * 12
    # one pass per ingredient and one read for its Grams; the merge reads the ingredients and the Grams
    assert record["cost"]["held_out_passes"] == 5
    assert record["cost"]["ingredient_reads"] == pytest.approx(10 + 5 * gram_floats / model_floats)
    cache = statistics_dir(made["regmean"].parent, "gram")
    files = sorted(cache.glob("*.safetensors"))
    assert len(files) == 5

    again = _record(_cook(out, "recipes.regmean.alpha=0.1"))  # the same Grams, merged with another alpha
    assert again["grams_reused"] == [f"ft_{i}" for i in range(5)] and again["cost"]["held_out_passes"] == 0
    assert _close(load_file(made["regmean"] / "model.safetensors"), _textbook_regmean(models, evaluator.x, 0.1))
    assert sorted(cache.glob("*.safetensors")) == files


def test_an_interrupted_gram_pass_redoes_only_the_ingredient_it_was_on(pool, monkeypatch):  # noqa: F811
    out, evaluator = pool
    _patch(monkeypatch, evaluator)
    real, calls = regmean.input_grams, []

    def preempted_on_the_fourth(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt("preempted")
        return real(*args, **kwargs)

    monkeypatch.setattr(regmean, "input_grams", preempted_on_the_fourth)
    with pytest.raises(KeyboardInterrupt):
        _cook(out)
    monkeypatch.setattr(regmean, "input_grams", real)
    record = _record(_cook(out))
    assert record["grams_reused"] == ["ft_0", "ft_1", "ft_2"] and record["grams_computed"] == ["ft_3", "ft_4"]
    assert record["cost"]["held_out_passes"] == 2


# A fresh process per measure (see tests/soups/test_kernels.py): its VmHWM is this merge's.
CHILD = """
import re, sys, torch
from soup_exp.soups import merge_tensors, resolve_ingredients
from soup_exp.soups.regmean import regmean_kernel
torch.set_num_threads(1)
files = sys.argv[1:]
half = len(files) // 2
merge_tensors(resolve_ingredients(files[:half]), regmean_kernel,
              params={"grams": resolve_ingredients(files[half:]), "alpha": 0.1})
print(int(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) * 1024)
"""
WIDTH = 1024  # a layer and its Gram: 4 MiB each


def _files(tmp_path: Path, kind: str, n: int) -> list[Path]:
    paths = []
    for i in range(n):
        g = torch.Generator().manual_seed(i)
        tensors = {}
        for layer in range(3):
            w = torch.randn(WIDTH, WIDTH, generator=g)
            tensors[f"layer{layer}.weight"] = w if kind == "model" else w @ w.T / WIDTH + torch.eye(WIDTH)
        path = tmp_path / f"{kind}_{i}.safetensors"
        save_file(tensors, str(path))
        paths.append(path)
    return paths


def _peak(models: list[Path], grams: list[Path]) -> int:
    done = subprocess.run([sys.executable, "-c", CHILD, *map(str, models), *map(str, grams)],
                          capture_output=True, text=True, check=True,
                          env={**os.environ, "MALLOC_MMAP_THRESHOLD_": str(64 * 1024)})
    return int(done.stdout.split()[-1])


@pytest.mark.slow
def test_the_regmean_merge_peak_memory_does_not_grow_with_the_number_of_ingredients(tmp_path):
    small, large = 5, 12
    models, grams = _files(tmp_path, "model", large), _files(tmp_path, "gram", large)
    peaks = {n: _peak(models[:n], grams[:n]) for n in (small, large)}
    assert peaks[large] - peaks[small] < WIDTH * WIDTH * 4, peaks  # 7 more ingredients: not one more layer
