"""DDP: a signal that reaches ONE rank (torchrun, 2 gloo ranks, no SLURM) stops both at the
same step with one checkpoint, the job ends at once instead of a rank waiting in a
collective for the other (gloo's timeout is an hour), and the rerun resumes to the weights
of an uninterrupted 2-rank run, bit for bit.

SIGTERM is what ``scontrol requeue`` and ``scancel`` send; here it goes to rank 1's process
only, from outside, at whatever point of a step rank 1 happens to be in."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from soup_exp.finetune import run_finetune

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
STEPS = 200  # 40 train images / batch 8 = 5 steps an epoch, 40 epochs: the signal lands mid-run
LEAVES_WITHIN_S = 60


def _command(tiny_cli_overrides, root: Path, *extra: str) -> list[str]:
    return [*TORCHRUN, "-m", "soup_exp.finetune", *tiny_cli_overrides(root, *extra)]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def _rank_pid(torchrun: int, rank: int) -> int | None:
    """The pid of the worker torchrun started for global ``rank`` (its child with RANK=<rank>)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            environ = (entry / "environ").read_bytes().split(b"\0") if parent == torchrun else []
        except (OSError, IndexError, ValueError):
            continue
        if f"RANK={rank}".encode() in environ:
            return int(entry.name)
    return None


def _kill_with_its_ranks(torchrun: subprocess.Popen) -> None:
    """torchrun starts each rank in a session of its own, so killing torchrun would leave them running."""
    for pid in (_rank_pid(torchrun.pid, rank) for rank in (0, 1)):
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    torchrun.kill()
    torchrun.wait(timeout=60)


def _wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _ingredient(root: Path, name: str) -> Path:
    return root / "outputs" / "t" / "ingredients" / name


@pytest.mark.slow
def test_sigterm_to_one_rank_stops_both_at_one_step_and_the_rerun_is_bit_identical(
        tiny_root: Path, compose_tiny, tiny_cli_overrides) -> None:
    init = run_finetune(compose_tiny(tiny_root, "train.mode=zeroshot", "sweep.name=zs"))
    common = [f"train.init_from={init}", "train.epochs=40", "train.ckpt_every_steps=5", "train.aug=rand-m9-n2",
              "train.label_smoothing=0.1"]

    straight = subprocess.run(_command(tiny_cli_overrides, tiny_root, "sweep.name=straight", *common), env=_env(),
                              capture_output=True, text=True, timeout=600)
    assert straight.returncode == 0, straight.stderr[-3000:]

    stopped_dir = _ingredient(tiny_root, "stopped")
    command = _command(tiny_cli_overrides, tiny_root, "sweep.name=stopped", *common)
    log = tiny_root / "stopped.log"
    with log.open("w") as out:
        torchrun = subprocess.Popen(command, env=_env(), stdout=out, stderr=subprocess.STDOUT)
        try:
            rank1 = _wait_for(lambda: _rank_pid(torchrun.pid, 1), 120, "torchrun to start rank 1")
            _wait_for(lambda: (stopped_dir / "checkpoints" / "last.pt").is_file(), 300, "the first checkpoint")
            os.kill(rank1, signal.SIGTERM)
            signalled = time.monotonic()
            try:
                code = torchrun.wait(timeout=LEAVES_WITHIN_S)
            except subprocess.TimeoutExpired:
                raise AssertionError(f"the job still runs {LEAVES_WITHIN_S} s after SIGTERM reached rank 1 (a rank "
                                     f"waits for the other in a collective):\n{log.read_text()[-3000:]}") from None
            print(f"both ranks left {time.monotonic() - signalled:.1f} s after the signal")
        finally:
            if torchrun.poll() is None:
                _kill_with_its_ranks(torchrun)
    shown = log.read_text()
    assert code != 0, shown[-3000:]  # the ranks stopped short of the end (143); torchrun reports that as a failure

    stops = re.findall(r"soup-exp finetune: stopped by SIGTERM at step (\d+) \(checkpoint (\S+)\)", shown)
    assert len(stops) == 2, f"expected both ranks to report the stop:\n{shown[-3000:]}"
    assert len({step for step, _ in stops}) == 1, f"the ranks stopped at different steps: {stops}"
    step = int(stops[0][0])
    assert 5 <= step < STEPS
    last = stopped_dir / "checkpoints" / "last.pt"
    assert sorted(p.name for p in (stopped_dir / "checkpoints").iterdir()) == ["last.pt"]
    assert torch.load(last, weights_only=True)["step"] == step
    assert not (stopped_dir / "ingredient.json").exists()

    resumed = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    train = json.loads((stopped_dir / "ingredient.json").read_text())["metrics"]["train"]
    assert (train["world_size"], train["resumed_from_step"], train["steps"]) == (2, step, STEPS)
    a = load_file(str(_ingredient(tiny_root, "straight") / "model.safetensors"))
    b = load_file(str(stopped_dir / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
