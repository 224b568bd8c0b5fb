"""DDP: 2 processes (torchrun, gloo) and 1 process with the same global batch end with the
same weights.

The data order, the per-sample augmentation seeds and the gradient mean do not depend on
the world size, so only float summation order differs. AdamW divides by sqrt(v), which
turns float noise in parameters whose true gradient is zero (e.g. attention key biases)
into updates of up to lr, so an elementwise bound would test Adam, not DDP. Tolerance:
the L2 distance between the two results must be <= 2e-3 of the distance training moved
the weights (observed 2.5e-4); a wrong batch split or loss scale gives O(1). The sampler
test in test_data_order.py checks the split exactly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from soup_exp.finetune import run_finetune

RELATIVE_TOLERANCE = 2e-3


def _cli(prefix: list[str], overrides: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([*prefix, "-m", "soup_exp.finetune", *overrides], env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_two_rank_ddp_matches_one_process(tiny_root: Path, compose_tiny, tiny_cli_overrides) -> None:
    init = run_finetune(compose_tiny(tiny_root, "train.mode=zeroshot", "sweep.name=zs"))
    common = [f"train.init_from={init}", "train.epochs=2", "train.aug=rand-m9-n2",
              "train.label_smoothing=0.1", "train.grad_accum=2"]

    one = _cli([sys.executable], tiny_cli_overrides(tiny_root, "sweep.name=one", *common))
    assert one.returncode == 0, one.stderr[-3000:]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    two = _cli(torchrun, tiny_cli_overrides(tiny_root, "sweep.name=two", *common))
    assert two.returncode == 0, two.stderr[-3000:]

    ingredients = tiny_root / "outputs" / "t" / "ingredients"
    info = json.loads((ingredients / "two" / "ingredient.json").read_text())
    assert info["metrics"]["train"]["world_size"] == 2
    assert info["metrics"]["train"]["steps"] == 10
    single = json.loads((ingredients / "one" / "ingredient.json").read_text())["metrics"]["train"]["final_loss"]
    print("final losses", single, info["metrics"]["train"]["final_loss"])
    # the mean over both ranks' shards, i.e. the loss of the same global batch
    assert abs(info["metrics"]["train"]["final_loss"] - single) <= 1e-3 * max(1.0, single)
    a = load_file(str(ingredients / "one" / "model.safetensors"))
    b = load_file(str(ingredients / "two" / "model.safetensors"))
    start = load_file(str(init / "model.safetensors"))
    assert any(not torch.equal(a[k], start[k]) for k in a), "training did not change the weights"
    apart = sum(float((a[k] - b[k]).pow(2).sum()) for k in a) ** 0.5
    moved = sum(float((a[k] - start[k]).pow(2).sum()) for k in a) ** 0.5
    assert apart <= RELATIVE_TOLERANCE * moved, f"1-process vs 2-rank: {apart} apart, moved {moved}"
    assert torch.allclose(a["head.weight"], b["head.weight"], atol=1e-5)
