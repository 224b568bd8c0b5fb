"""A run hard-killed mid-way and started again ends with the weights of an uninterrupted run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from soup_exp.finetune import run_finetune

WORKER = Path(__file__).parent / "_kill_worker.py"


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "model.safetensors"))


COMMON = ["train.epochs=3", "train.ckpt_every_steps=4", "train.aug=rand-m9-n2", "train.mix=0.4",
          "train.label_smoothing=0.1"]


def _straight_run(tiny_root: Path, compose_tiny) -> tuple[Path, list[str]]:
    init = run_finetune(compose_tiny(tiny_root, "train.mode=zeroshot", "sweep.name=zs"))
    common = [*COMMON, f"train.init_from={init}"]
    return run_finetune(compose_tiny(tiny_root, "sweep.name=straight", *common)), common


def _assert_same_weights(a_dir: Path, b_dir: Path) -> None:
    a, b = _weights(a_dir), _weights(b_dir)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_killed_run_resumes_to_identical_weights(tiny_root: Path, compose_tiny) -> None:
    straight, common = _straight_run(tiny_root, compose_tiny)

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
    _assert_same_weights(straight, resumed)


@pytest.mark.parametrize(("signame", "group", "workers"), [("SIGINT", False, 0), ("SIGTERM", True, 2)])
def test_signalled_run_checkpoints_at_once_says_so_in_one_line_and_resumes(
        tiny_root: Path, compose_tiny, signame: str, group: bool, workers: int) -> None:
    """Ctrl-C, or SLURM's SIGTERM to every process of the step (loader workers included):
    a checkpoint at the very step, one line, the shell's exit status, then an identical resume."""
    straight, common = _straight_run(tiny_root, compose_tiny)
    env = {**os.environ, "KILL_AT_STEP": "6", "KILL_SIGNAL": signame, "OMP_NUM_THREADS": "1",
           **({"KILL_GROUP": "1"} if group else {})}
    args = [sys.executable, str(WORKER), str(tiny_root), "sweep.name=stopped", f"num_workers={workers}", *common]
    stopped = subprocess.run(args, env=env, capture_output=True, text=True, timeout=180, start_new_session=True)
    assert stopped.returncode == 128 + getattr(__import__("signal"), signame), stopped.stderr[-3000:]
    assert "Traceback" not in stopped.stderr and "DataLoader worker" not in stopped.stderr, stopped.stderr[-3000:]
    out = tiny_root / "outputs" / "t" / "ingredients" / "stopped"
    last = out / "checkpoints" / "last.pt"
    assert f"soup-exp finetune: stopped by {signame} at step 6 (checkpoint {last}); rerun the same command " \
           "to resume" in stopped.stderr.splitlines()[-1]
    assert torch.load(last, weights_only=True)["step"] == 6 and not (out / "ingredient.json").exists()

    resumed = run_finetune(compose_tiny(tiny_root, "sweep.name=stopped", f"num_workers={workers}", *common))
    info = __import__("json").loads((resumed / "ingredient.json").read_text())
    assert info["metrics"]["train"]["resumed_from_step"] == 6
    _assert_same_weights(straight, resumed)
