"""A run hard-killed mid-way and started again ends with the weights of an uninterrupted run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from soup_exp.finetune import run_finetune

WORKER = Path(__file__).parent / "_kill_worker.py"


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "model.safetensors"))


def test_killed_run_resumes_to_identical_weights(tiny_root: Path, compose_tiny) -> None:
    common = ["train.epochs=3", "train.ckpt_every_steps=4", "train.aug=rand-m9-n2", "train.mix=0.4",
              "train.label_smoothing=0.1"]
    init = run_finetune(compose_tiny(tiny_root, "train.mode=zeroshot", "sweep.name=zs"))
    common.append(f"train.init_from={init}")

    straight = run_finetune(compose_tiny(tiny_root, "sweep.name=straight", *common))

    env = {**os.environ, "KILL_AT_STEP": "6", "OMP_NUM_THREADS": "1"}
    args = [sys.executable, str(WORKER), str(tiny_root), "sweep.name=killed", *common]
    killed = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
    assert killed.returncode == -9, killed.stderr[-2000:]
    out = tiny_root / "outputs" / "t" / "ingredients" / "killed"
    assert (out / "checkpoints" / "last.pt").is_file() and not (out / "ingredient.json").exists()
    assert torch.load(out / "checkpoints" / "last.pt", weights_only=True)["step"] == 4

    resumed = run_finetune(compose_tiny(tiny_root, "sweep.name=killed", *common))
    info = __import__("json").loads((resumed / "ingredient.json").read_text())
    assert info["metrics"]["train"]["resumed_from_step"] == 4
    assert info["metrics"]["train"]["steps"] == 15
    assert not (resumed / "checkpoints").exists()
    a, b = _weights(straight), _weights(resumed)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
