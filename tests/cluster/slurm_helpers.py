"""Helpers of the cluster tests: commands against the local SLURM, and waiting for it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from tiny_finetune import tiny_overrides

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "local_slurm.sh"
# what a job of the 2-CPU test node may ask for
FITS = ["hydra.launcher.gpus_per_node=0", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1",
        "hydra.launcher.timeout_min=20"]


def answers(*command: str) -> bool:
    try:
        return subprocess.run(command, capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def local_slurm(*args: str) -> None:
    done = subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr


def finetune_command(root: Path, *extra: str, name: str = "t") -> list[str]:
    overrides = [f"name={name}" if o == "name=t" else o for o in tiny_overrides(root, *extra)]
    return [sys.executable, "-m", "soup_exp.finetune", *overrides]


def run_command(command: Sequence[str], cwd: Path, timeout: float = 600,
                env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess:
    full = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(list(command), cwd=cwd, env=full, capture_output=True, text=True, timeout=timeout)


def start_command(command: Sequence[str], cwd: Path, log: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(list(command), cwd=cwd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)


def squeue(*args: str) -> list[list[str]]:
    out = subprocess.run(["squeue", "-h", "-r", *args], capture_output=True, text=True, timeout=120).stdout
    return [line.split("|") for line in out.split()]


def submitted_from(root: Path) -> list[str]:
    """What a test submitted, told apart from the jobs of tests beside it on the shared queue.

    submitit writes a job's submission script before it calls sbatch, and sbatch starts the job in
    the caller's folder, so either one shows a submission, even of a job that has already ended.
    """
    scripts = [str(p) for p in root.rglob("*_submission.sh")]
    queued = [job for job, folder in squeue("-o", "%i|%Z") if Path(folder).is_relative_to(root)]
    return scripts + queued


def wait_for(condition, timeout: float, what: str, poll: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def release_held(job_ids: Sequence[str]) -> None:
    """A requeued job waits ~120 s (Reason=BeginTime) before it may start again; let it start now."""
    for job_id in job_ids:
        subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], capture_output=True, timeout=120)
