"""A new user's first runs through the real CLI: a run that cannot start creates nothing,
a dry run shows the whole plan and writes nothing, experiment=debug runs every stage."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from soup_exp.stages.entry import STAGES, available_options, packaged_config_dir
from soup_exp.stages.preflight import plan, render_plan


def soup_exp(cwd: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """``soup-exp`` as a user runs it: from ``cwd``, defaults for every path (./data, ./outputs)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOUP_")}
    env.update(WANDB_MODE="offline", WANDB_SILENT="true", SOUP_CACHE_DIR=str(cwd.parent / f"{cwd.name}-cache"))
    return subprocess.run([sys.executable, "-m", "soup_exp.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize(("args", "message"), [
    (["finetune", "sweep=replay"],
     "soup-exp finetune: error: train.init_from="),  # replay without an LP init
    (["finetune", "data.classes=[n01440764,n99999999]"],
     "soup-exp finetune: error: data.classes: 'n99999999' is not an ImageNet-1k wnid (nearest valid wnid:"),
    (["soup"], "soup-exp soup: error: ingredient path"),
])
def test_a_run_that_fails_its_checks_says_so_in_one_line_and_creates_nothing(tmp_path, args, message):
    result = soup_exp(tmp_path, *args)
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len([line for line in result.stderr.splitlines() if line.strip()]) == 1
    assert list(tmp_path.iterdir()) == []  # no outputs/default, no hydra/ folder, no W&B run


def test_dry_run_of_a_sweep_lists_every_job_and_writes_nothing(tmp_path):
    result = soup_exp(tmp_path, "finetune", "-m", "experiment=smoke", "sweep=demo", "sweep.index=range(3)",
                      "train.init_from=null", "--dry-run")
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "soup-exp finetune: dry run, nothing is written (3 jobs, launcher local)" in out
    for name in ("ft_000", "ft_001", "ft_002"):
        assert f"{name} [to run] finetune from the pretrained model, zeroshot head; sweep random {name}: lr=" in out
    assert "data.prepare: soup_exp.demo.synthetic.ensure_synthetic, run by the pipeline's data stage" in out
    assert "ImageNet2p (held-out): 10 images/class" in out and "(seed 0)  [not made yet]" in out
    assert f"ingredients: {tmp_path / 'outputs' / 'smoke' / 'ingredients'}" in out
    assert list(tmp_path.iterdir()) == [] and not (tmp_path.parent / f"{tmp_path.name}-cache").exists()


def test_a_stage_run_before_the_data_stage_says_to_run_it_and_creates_nothing(tmp_path):
    result = soup_exp(tmp_path, "evaluate", "experiment=smoke")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("soup-exp evaluate: error: dataset root(s) not found: ImageNet (")
    assert line.endswith("data.prepare (soup_exp.demo.synthetic.ensure_synthetic) makes them: run the data "
                         "stage first, `soup-exp pipeline pipeline.stages=[data]` with this run's overrides")
    assert list(tmp_path.iterdir()) == [] and not (tmp_path.parent / f"{tmp_path.name}-cache").exists()


@pytest.mark.parametrize("experiment", [None, *available_options("experiment")])
def test_every_experiment_plans_every_stage_without_writing(experiment, tmp_path, monkeypatch):
    """The pipeline's dry-run plan for each experiment: every stage's section, the sweep's
    jobs, datasets with their roots, output paths; the output root stays empty."""
    monkeypatch.setenv("SOUP_OUTPUT_DIR", str(tmp_path / "outputs"))
    overrides = [] if experiment is None else [f"experiment={experiment}"]
    with initialize_config_dir(config_dir=str(packaged_config_dir()), version_base="1.3"):
        cfg = compose(config_name="pipeline", overrides=overrides)
        sections = plan(STAGES["pipeline"], cfg, overrides)
    text = render_plan("pipeline", sections)
    for section in ("stages", "data", "finetune", "soup", "evaluate", "report", "outputs"):
        assert f"\n{section}:\n" in text, section
    jobs = [line for line in sections["finetune"] if line.strip().startswith("ft_")]
    assert len(jobs) == cfg.pipeline.sweep_size and all("[to run]" in job for job in jobs)
    assert any(line.startswith("lp_init [to run] lp") for line in sections["finetune"])
    assert any(line.startswith("ImageNetSketch: ") for line in sections["data"])
    assert not (tmp_path / "outputs").exists()


@pytest.mark.slow
def test_debug_experiment_runs_every_stage_and_a_second_dry_run_finds_it_done(tmp_path):
    """experiment=debug end to end; then its dry run reports every job, soup and result as done.
    (tests/training/test_submitit.py runs the submitit launcher.)"""
    result = soup_exp(tmp_path, "pipeline", "experiment=debug", timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-4000:]
    out = tmp_path / "outputs" / "debug"
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert {"zeroshot", "lp_init", "ft_000", "uniform", "greedy", "wise_ft_greedy_a0.50"} <= {r["name"] for r in rows}
    assert all(r["meta"]["classes"]["count"] == 8 for r in rows)
    assert (out / "report" / "table.md").is_file() and not (out / "wandb").exists()  # logger disabled
    assert "finished in" in result.stdout

    again = soup_exp(tmp_path, "pipeline", "experiment=debug", "--dry-run")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "[to run]" not in again.stdout and "to evaluate" not in again.stdout
    assert "ft_000 [done, skipped]" in again.stdout and "uniform [done, skipped]" in again.stdout


def test_the_demo_dry_run_imports_no_model_library_and_writes_nothing(tmp_path):
    """A plan lists; it never needs open_clip, timm, torchvision or matplotlib (seconds of
    imports each), and composes each stage's config once: the fine-tune stage's for the
    sweep (all its jobs), the zero-shot model, the LP init and once for its keys, which
    the sweep's command line is filtered by."""
    script = ("import sys\n"
              "import soup_exp.pipeline as pipeline\n"
              "from soup_exp.cli import main\n"
              "composed = []\n"
              "real = pipeline.compose\n"
              "pipeline.compose = lambda **kw: composed.append(kw['config_name']) or real(**kw)\n"
              "sys.argv = ['soup-exp', 'pipeline', 'experiment=demo', '--dry-run']\n"
              "try:\n    main()\nexcept SystemExit as done:\n    code = done.code\n"
              "heavy = sorted(m for m in ('open_clip', 'timm', 'matplotlib', 'torchvision') if m in sys.modules)\n"
              "print('HEAVY', code, ','.join(heavy))\n"
              "print('COMPOSED', ','.join(sorted(composed)))\n")
    env = {**os.environ, "SOUP_ROOT": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "HEAVY 0 \n" in done.stdout, done.stdout[-500:]
    assert "COMPOSED evaluate,finetune,finetune,finetune,finetune,report,soup\n" in done.stdout, done.stdout[-500:]
    assert list(tmp_path.iterdir()) == []
