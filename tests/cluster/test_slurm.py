"""The documented cluster commands against a real SLURM controller (tests/cluster/conftest.py).

Jobs are tiny fine-tunes on a 2-CPU node; every interruption is a real one: ``scontrol
requeue``, SIGUSR2 as SLURM sends it before a time limit (``scancel --signal``), ``scancel``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from slurm_helpers import (
    FITS,
    finetune_command,
    release_held,
    run_command,
    squeue,
    start_command,
    submitted_from,
    wait_for,
)

pytestmark = pytest.mark.slow

LONG = ["train.epochs=40", "train.ckpt_every_steps=5", "num_workers=2"]  # ~200 steps: time to interrupt


def _ingredients(root: Path, name: str = "t") -> Path:
    return root / "outputs" / name / "ingredients"


def _lp_init(root: Path) -> None:
    done = run_command(finetune_command(root, "sweep=lp_init"), cwd=root)
    assert done.returncode == 0, done.stderr[-3000:]


def _info(path: Path) -> dict:
    return json.loads((path / "ingredient.json").read_text())


def _same_weights(a: Path, b: Path) -> None:
    left, right = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert left.keys() == right.keys()
    for key in left:
        assert torch.equal(left[key], right[key]), f"{a.name} vs {b.name}: {key}"


def _job_ids(log: Path, count: int) -> list[str]:
    """The SLURM job ids the watched launcher announced, in job order."""
    def announced():
        lines = [line for line in log.read_text().splitlines() if " -> job " in line]
        return [line.split(" -> job ", 1)[1].split(",", 1)[0] for line in lines] if len(lines) >= count else None

    return wait_for(announced, 120, "the launcher to announce its jobs")


def _running_with_checkpoint(job_id: str, out: Path) -> bool:
    states = {row[0]: row[1] for row in squeue("-o", "%i|%T", "-j", job_id.split("_")[0])}
    return states.get(job_id) == "RUNNING" and (out / "checkpoints" / "last.pt").is_file()


def _release_when_held(job_ids: list[str], until) -> None:
    """Start requeued jobs at once instead of after SLURM's ~120 s hold, until ``until()``."""
    deadline = time.monotonic() + 400
    while not until() and time.monotonic() < deadline:
        release_held(job_ids)
        time.sleep(2)


def test_a_sweep_survives_a_requeue_and_a_preemption_with_identical_weights(slurm, tiny_job_root: Path) -> None:
    root = tiny_job_root
    _lp_init(root)
    sweep = ["sweep=demo", "sweep.index=0,1,2", f"train.init_from={_ingredients(root) / 'lp_init'}", *LONG]
    reference = run_command([*finetune_command(root, *sweep, name="ref"), "--multirun"], cwd=root)
    assert reference.returncode == 0, reference.stderr[-3000:]

    log = root / "submitter.log"
    submitter = start_command([*finetune_command(root, "launcher=slurm", *FITS, *sweep), "--multirun"], root, log)
    try:
        ids = _job_ids(log, 3)
        members = [_ingredients(root) / f"ft_00{i}" for i in range(3)]
        wait_for(lambda: _running_with_checkpoint(ids[0], members[0]) and _running_with_checkpoint(ids[1], members[1]),
                 240, "members 0 and 1 to run and checkpoint")
        assert os.system(f"scontrol requeue {ids[0]}") == 0
        assert os.system(f"scancel --signal=USR2 {ids[1]}") == 0
        _release_when_held(ids[:2], until=lambda: submitter.poll() is not None)
        assert submitter.wait(timeout=60) == 0, log.read_text()[-4000:]
    finally:
        if submitter.poll() is None:
            submitter.kill()
            os.system(f"scancel --name=finetune --user={os.getuid()}")
    shown = log.read_text()
    assert "Traceback" not in shown and "3/3 done" in shown, shown[-4000:]
    for member in members[:2]:
        assert _info(member)["metrics"]["train"]["resumed_from_step"] > 0, member.name
    for member in members:
        _same_weights(member, _ingredients(root, "ref") / member.name)


def test_a_two_rank_ddp_job_preempted_mid_run_resumes_and_completes(slurm, tiny_job_root: Path) -> None:
    root = tiny_job_root
    _lp_init(root)
    log = root / "submitter.log"
    job = ["launcher=slurm", *FITS, "hydra.launcher.tasks_per_node=2", "sweep=demo", "sweep.index=0", *LONG]
    submitter = start_command([*finetune_command(root, *job), "--multirun"], root, log)
    member = _ingredients(root) / "ft_000"
    try:
        (job_id,) = _job_ids(log, 1)
        wait_for(lambda: _running_with_checkpoint(job_id, member), 240, "the DDP job to run and checkpoint")
        assert os.system(f"scancel --signal=USR2 {job_id}") == 0
        _release_when_held([job_id], until=lambda: submitter.poll() is not None)
        assert submitter.wait(timeout=60) == 0, log.read_text()[-4000:]
    finally:
        if submitter.poll() is None:
            submitter.kill()
            os.system(f"scancel {job_id}")
    train = _info(member)["metrics"]["train"]
    assert train["world_size"] == 2 and 0 < train["resumed_from_step"] < train["steps"]


SITE_LAUNCHER = """\
# @package _global_
# what a user writes once for their cluster (docs/cluster.md)
defaults:
  - slurm
hydra:
  launcher:
    gpus_per_node: 0
    cpus_per_task: 1
    mem_gb: 1
    timeout_min: 20
"""


def test_the_smoke_pipeline_submits_with_the_launcher_settings_and_a_rerun_submits_nothing_finished(
        slurm, tmp_path: Path) -> None:
    site = tmp_path / "site"
    (site / "launcher").mkdir(parents=True)
    (site / "launcher" / "mysite.yaml").write_text(SITE_LAUNCHER)
    env = {"SOUP_OUTPUT_DIR": str(tmp_path / "out"), "SOUP_CACHE_DIR": str(tmp_path / "cache")}
    command = [sys.executable, "-m", "soup_exp.cli", "pipeline", "--config-dir", str(site), "experiment=smoke",
               "launcher=mysite", f"hydra.launcher.partition={slurm.partition}", "hydra.launcher.mem_gb=2",
               "logger=disabled",
               "pipeline.stages=[data,finetune,soup,evaluate,report]"]  # the analyses add minutes, not paths
    first = run_command(command, cwd=tmp_path, timeout=900, env=env)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    scripts = sorted((tmp_path / "out" / "smoke" / "hydra").rglob("*_submission.sh"))
    assert {p.parts[-5].split("-")[0] for p in scripts} == {"finetune", "soup", "evaluate"}
    for script in scripts:  # the site file's settings, and the command line's beside and over them
        text = script.read_text()
        assert f"#SBATCH --partition={slurm.partition}" in text and "#SBATCH --mem=2GB" in text, script
        assert "#SBATCH --cpus-per-task=1" in text and "#SBATCH --signal=USR2@" in text, script
    second = run_command(command, cwd=tmp_path, timeout=900, env=env)
    assert second.returncode == 0, second.stderr[-3000:]
    shown = second.stdout + second.stderr
    finetune_scripts = [p for p in (tmp_path / "out" / "smoke" / "hydra").rglob("*_submission.sh")
                        if "finetune" in p.parts[-5]]
    assert len(finetune_scripts) == 2, "the rerun submitted fine-tunes again"
    assert shown.count("not submitted") == 4  # zero-shot, LP init and both sweep members


def test_a_request_the_partition_cannot_meet_is_one_line_before_submission(slurm, tiny_job_root: Path) -> None:
    _lp_init(tiny_job_root)
    done = run_command([*finetune_command(tiny_job_root, "launcher=slurm", "sweep=demo", "sweep.index=0,1"),
                        "--multirun"], cwd=tiny_job_root)
    assert done.returncode == 2
    last = done.stderr.strip().splitlines()
    assert len(last) == 1 and last[0].startswith("soup-exp finetune: error: hydra.launcher.gpus_per_node=1: ")
    assert "set hydra.launcher.gpus_per_node=0" in last[0]
    assert not submitted_from(tiny_job_root)

    env = {"SOUP_OUTPUT_DIR": str(tiny_job_root / "out"), "SOUP_CACHE_DIR": str(tiny_job_root / "cache")}
    pipeline = run_command([sys.executable, "-m", "soup_exp.cli", "pipeline", "experiment=smoke", "launcher=slurm",
                            *FITS, "hydra.launcher.mem_gb=100000"], cwd=tiny_job_root, env=env)
    assert pipeline.returncode == 2
    assert pipeline.stderr.strip().splitlines()[-1].startswith("soup-exp pipeline: error: hydra.launcher.mem_gb=100000: ")
    assert not (tiny_job_root / "cache").exists(), "the pipeline started its first stage"
    assert not submitted_from(tiny_job_root)


def _cancelled_job_is_reported(root: Path) -> None:
    _lp_init(root)
    log = root / "submitter.log"
    submitter = start_command([*finetune_command(root, "launcher=slurm", *FITS, "sweep=demo", "sweep.index=0",
                                                 "train.epochs=400", "num_workers=2"), "--multirun"], root, log)
    try:
        (job_id,) = _job_ids(log, 1)
        wait_for(lambda: [job_id, "RUNNING"] in squeue("-o", "%i|%T", "-j", job_id), 120, "the job to run")
        assert os.system(f"scancel {job_id}") == 0
        cancelled = time.monotonic()
        code = submitter.wait(timeout=60)
        assert time.monotonic() - cancelled < 60
    finally:
        if submitter.poll() is None:
            submitter.kill()
    shown = log.read_text()
    assert code == 1, shown[-3000:]
    assert f"SLURM job {job_id} ended cancelled without a result" in shown and "_log.err" in shown
    assert "Traceback" not in shown, shown[-3000:]


def test_a_cancelled_job_is_reported_failed_within_a_minute(slurm, tiny_job_root: Path) -> None:
    _cancelled_job_is_reported(tiny_job_root)


def test_without_accounting_too_and_sacct_is_mentioned_once(slurm, without_accounting, tiny_job_root: Path) -> None:
    _cancelled_job_is_reported(tiny_job_root)
    shown = (tiny_job_root / "submitter.log").read_text()
    assert shown.count("SLURM accounting does not answer") == 1 and "Bypassing sacct error" not in shown
