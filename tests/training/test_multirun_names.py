"""A multirun over plain overrides gives each job its own ingredient; jobs that would still
write one directory are refused before anything runs, naming only the keys they differ in."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from soup_exp.utils.config import SECRETS_ENV

SMOKE = ["experiment=smoke", "train.init_from=null"]


def _finetune(tmp_path: Path, *args: str, timeout: int = 180) -> subprocess.CompletedProcess:
    env = {**os.environ, "SOUP_ROOT": str(tmp_path), "SOUP_CACHE_DIR": str(tmp_path / "cache")}
    env.pop(SECRETS_ENV, None)
    return subprocess.run([sys.executable, "-m", "soup_exp.finetune", *args], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=timeout)


def test_the_plan_of_a_plain_override_sweep_lists_one_ingredient_per_job(tmp_path):
    done = _finetune(tmp_path, "-m", *SMOKE, "train.lr=1e-3,1e-4", "--dry-run")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "run_0 [to run]" in done.stdout and "run_1 [to run]" in done.stdout
    assert done.stdout.count("[to run]") == 2


def test_jobs_that_would_write_one_ingredient_are_refused_before_anything_runs(tmp_path):
    done = _finetune(tmp_path, "-m", *SMOKE, "sweep=demo", "train.lr=1e-3,1e-4")
    assert done.returncode == 2
    message = done.stderr.strip().splitlines()
    assert len(message) == 1 and "Traceback" not in done.stderr
    assert message[0].startswith("soup-exp finetune: error: jobs 0 and 1 of this multirun would both write ")
    assert "ft_000 (they differ only in train.lr)" in message[0]
    assert not (tmp_path / "outputs").exists(), "nothing may be written before the refusal"


def test_a_plain_override_sweep_trains_distinct_ingredients(tiny_root: Path, tiny_cli_overrides) -> None:
    overrides = tiny_cli_overrides(tiny_root, "train.lr=1e-3,1e-4", "train.max_steps=1", "train.mode=finetune")
    done = subprocess.run([sys.executable, "-m", "soup_exp.finetune", "-m", *overrides],
                          capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    ingredients = tiny_root / "outputs" / "t" / "ingredients"
    infos = [json.loads((ingredients / n / "ingredient.json").read_text()) for n in ("run_0", "run_1")]
    assert [i["hparams"]["lr"] for i in infos] == [1e-3, 1e-4]


def test_a_sweep_name_that_ignores_the_index_is_refused_from_two_composed_jobs(tmp_path):
    done = _finetune(tmp_path, "-m", *SMOKE, "sweep=demo", "sweep.name=same", "sweep.index=0,1,2")
    assert done.returncode == 2, done.stderr[-2000:]
    assert "jobs 0 and 1 of this multirun would both write" in done.stderr
    assert "(they differ only in sweep.index)" in done.stderr


def test_only_distinct_indices_decides_when_composing_two_jobs_is_enough():
    from soup_exp.stages.preflight import only_distinct_indices

    assert only_distinct_indices([["sweep=paper", "sweep.index=0"], ["sweep=paper", "sweep.index=1"]])
    assert not only_distinct_indices([["sweep.index=0", "train.lr=1"], ["sweep.index=0", "train.lr=2"]])
    assert not only_distinct_indices([["sweep.index=0", "train.lr=1"], ["sweep.index=1", "train.lr=2"]])
