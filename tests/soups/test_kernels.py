"""The per-tensor kernel engine: what a kernel is given, what it may return, what it costs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from soup_exp.errors import ConfigError
from soup_exp.soups import Tensors, merge_tensors, resolve_ingredients, uniform_soup
from soup_exp.soups.ingredients import IngredientMismatchError

USER_REPO = Path(__file__).parents[1] / "user_repo"


def mean(tensors: Tensors, base: torch.Tensor | None) -> torch.Tensor:
    """The uniform soup as a kernel, written as ``uniform_soup(arithmetic="sum")`` adds."""
    stream = iter(tensors)
    total = next(stream).clone()
    for tensor in stream:
        total.add_(tensor)
    return total.mul_(1.0 / len(tensors))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_uniform_kernel_is_uniform_soup_bit_for_bit(make_sd, dtype):
    pool = resolve_ingredients([make_sd(i) for i in range(5)])
    kernel_soup = merge_tensors(pool, mean, accumulate_dtype=dtype)
    summed = uniform_soup(pool, accumulate_dtype=dtype, arithmetic="sum")
    assert list(kernel_soup) == list(summed)
    assert all(torch.equal(kernel_soup[k], summed[k]) and kernel_soup[k].dtype == summed[k].dtype for k in summed)


def test_each_tensor_comes_in_the_accumulation_dtype_and_leaves_in_the_ingredients(make_sd):
    seen = []

    def record(tensors, base):
        seen.append({t.dtype for t in tensors} | {base.dtype})
        return base

    pool = resolve_ingredients([make_sd(i, torch.float16) for i in range(3)])
    out = merge_tensors(pool, record, base=pool[0], accumulate_dtype=torch.float64)
    assert seen and all(s == {torch.float64} for s in seen)
    assert all(t.dtype == torch.float16 for t in out.values())


@pytest.mark.parametrize("read, wanted", [
    (lambda tensors: [], lambda n: []),
    (lambda tensors: [next(iter(tensors))], lambda n: [0]),
    (lambda tensors: [*tensors, *tensors], lambda n: [*range(n), *range(n)]),
])
def test_a_kernel_may_read_its_tensors_once_twice_in_part_or_not_at_all(make_sd, read, wanted):
    sds = [make_sd(i) for i in range(4)]
    seen = {}

    def kernel(tensors, base):
        seen[tensors.key] = read(tensors)
        return torch.zeros(sds[0][tensors.key].shape)

    merge_tensors(resolve_ingredients(sds), kernel)
    assert list(seen) == list(sds[0])
    for key, tensors in seen.items():
        expected = [sds[i][key] for i in wanted(len(sds))]
        assert len(tensors) == len(expected) and all(map(torch.equal, tensors, expected))


@pytest.mark.parametrize("bad, message", [
    (lambda tensors, base: torch.zeros(2, 2), r"^recipe bad: tensor 'image_encoder\.proj': the kernel returned "
                                              r"shape \[2, 2\], expected \[4, 3\]$"),
    (lambda tensors, base: next(iter(tensors)) / 0.0, r"^recipe bad: tensor 'image_encoder\.proj': the kernel "
                                                      r"returned NaN or infinite values; nothing was written$"),
    (lambda tensors, base: 3.0, r"^recipe bad: tensor 'image_encoder\.proj': the kernel returned float, not a tensor$"),
])
def test_a_bad_kernel_output_is_one_line_naming_the_recipe_and_the_tensor(make_sd, bad, message):
    pool = resolve_ingredients([make_sd(i) for i in range(2)])
    with pytest.raises(ConfigError, match=message):
        merge_tensors(pool, bad, name="bad")


def test_integer_buffers_are_copied_and_must_match_the_base_too(make_sd):
    steps = {"steps": torch.tensor([3])}
    pool = resolve_ingredients([{**make_sd(0), **steps}, {**make_sd(1), **steps}])
    out = merge_tensors(pool, mean)
    assert torch.equal(out["steps"], steps["steps"])
    base = resolve_ingredients({**make_sd(2), "steps": torch.tensor([4])})[0]
    with pytest.raises(IngredientMismatchError, match="non-float tensor 'steps'"):
        merge_tensors(pool, mean, base=base)


# A fresh process per measure, so that its peak resident size is this merge's (VmHWM: the
# high-water mark of this process's memory map; getrusage's ru_maxrss would carry the
# parent's peak over the exec); glibc's malloc is told to map every large block on its own,
# so a freed tensor leaves the count.
CHILD = """
import importlib, json, re, sys, torch
sys.path.insert(0, sys.argv[1])
from soup_exp.soups import merge_tensors, resolve_ingredients
def stacked_mean(tensors, base, **params):
    return torch.stack(list(tensors)).mean(0)
torch.set_num_threads(1)
module, _, attr = sys.argv[2].rpartition(":")
kernel = getattr(importlib.import_module(module), attr).fn if module else stacked_mean
merge_tensors(resolve_ingredients(sys.argv[5:]), kernel, base=resolve_ingredients(sys.argv[4])[0],
              params=json.loads(sys.argv[3]))
print(int(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) * 1024)
"""
TENSOR = 2 ** 20  # floats: 4 MiB a tensor, three tensors a model
PARAMS = {"density": 0.2, "scale": 1.0}
SMALL, LARGE = 5, 12  # pools past the reader's look-ahead (PREFETCH_TENSORS), so only N differs


def peak_bytes(files: list[Path], base: Path, kernel: str, params: dict) -> int:
    """Peak resident bytes of a fresh process merging ``files`` with ``kernel`` ("module:recipe",
    or "stacked_mean": N tensors held at once)."""
    done = subprocess.run([sys.executable, "-c", CHILD, str(USER_REPO), kernel, json.dumps(params), str(base),
                           *map(str, files)],
                          capture_output=True, text=True, check=True,
                          env={**os.environ, "MALLOC_MMAP_THRESHOLD_": str(64 * 1024)})
    return int(done.stdout.split()[-1])


def model_file(path: Path, seed: int) -> Path:
    g = torch.Generator().manual_seed(seed)
    save_file({f"layer{i}.weight": torch.randn(TENSOR, generator=g) for i in range(3)}, str(path))
    return path


@pytest.mark.slow
def test_the_user_ties_kernel_peak_memory_does_not_grow_with_the_number_of_ingredients(tmp_path):
    base = model_file(tmp_path / "base.safetensors", 100)
    files = [model_file(tmp_path / f"ft_{i}.safetensors", i) for i in range(LARGE)]
    tensor_bytes = TENSOR * 4
    ties = {n: peak_bytes(files[:n], base, "my_soups:ties", PARAMS) for n in (SMALL, LARGE)}
    assert ties[LARGE] - ties[SMALL] < tensor_bytes, ties  # 7 more ingredients: not one more tensor
    stacked = {n: peak_bytes(files[:n], base, "stacked_mean", {}) for n in (SMALL, LARGE)}
    assert stacked[LARGE] - stacked[SMALL] > 7 * tensor_bytes, stacked  # the measure sees N tensors held


def test_the_documented_task_arithmetic_kernel(make_sd, monkeypatch):
    monkeypatch.syspath_prepend(str(USER_REPO))
    monkeypatch.delitem(sys.modules, "my_soups", raising=False)
    from my_soups import task_arithmetic

    sds, start = [make_sd(i) for i in range(3)], make_sd(9)
    out = merge_tensors(resolve_ingredients(sds), task_arithmetic.fn, base=resolve_ingredients(start)[0],
                        params={"scale": 0.5})
    for key, tensor in out.items():
        assert torch.allclose(tensor, start[key] + 0.5 * sum(sd[key] - start[key] for sd in sds), atol=1e-6)


def test_a_kernel_recipe_starts_from_the_lp_init_and_is_skipped_without_its_base(tmp_path, make_sd, make_run,
                                                                                 monkeypatch, caplog):
    from omegaconf import OmegaConf

    from soup_exp.stages.roles import SoupRoles

    monkeypatch.syspath_prepend(str(USER_REPO))
    monkeypatch.delitem(sys.modules, "my_soups", raising=False)
    from my_soups import task_arithmetic

    lp = make_run(tmp_path / "pool", "lp_init", make_sd(9), kind="lp")
    sds = [make_sd(i) for i in range(2)]
    for i, sd in enumerate(sds):
        make_run(tmp_path / "pool", f"ft_{i}", sd, hparams={"init_from": str(lp)})
    cfg = OmegaConf.create({"soups_dir": str(tmp_path / "soups"), "zeroshot_dir": str(tmp_path / "zeroshot"),
                            "progress": False, "seed": 0,
                            "soup": {"accumulate_dtype": "float32", "arithmetic": "sum", "kernel_device": "cpu"}})
    ctx = SoupRoles(cfg, resolve_ingredients(tmp_path / "pool"), run=None).context("my_task_arithmetic", {})
    soup = task_arithmetic(ctx, base="lp", scale=1.0)
    assert soup.info == {"base": "lp_init"} and "base" in ctx.store.inputs()
    start = make_sd(9)
    for key, tensor in soup.state_dict.items():
        assert torch.allclose(tensor, start[key] + sum(sd[key] - start[key] for sd in sds), atol=1e-6)
    with caplog.at_level("WARNING"):
        assert task_arithmetic(ctx, base="zeroshot", scale=1.0) is None
    assert "recipe my_task_arithmetic skipped: its base 'zeroshot' needs a zero-shot model in" in caplog.text


def test_a_kernel_that_does_not_take_tensors_and_base_is_refused_where_it_is_defined():
    from soup_exp.soups import kernel

    with pytest.raises(TypeError, match=r"kernel .*one_argument must take \(tensors, base, \*\*params\)"):
        @kernel
        def one_argument(tensors):
            return tensors
