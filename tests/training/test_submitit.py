"""A 2-job multirun through hydra-submitit-launcher's local executor (the SLURM code path
without a cluster) produces two valid, distinct ingredients."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from soup_exp.finetune import run_finetune


@pytest.mark.slow
def test_submitit_local_multirun_writes_two_ingredients(tiny_root: Path, compose_tiny, tiny_cli_overrides) -> None:
    lp = run_finetune(compose_tiny(tiny_root, "sweep=lp_init"))
    overrides = tiny_cli_overrides(tiny_root, "launcher=submitit_local", "sweep=demo", "sweep.index=0,1",
                                   f"train.init_from={lp}", "hydra.launcher.timeout_min=10")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "soup_exp.finetune", "--multirun", *overrides],
                          env=env, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    ingredients = tiny_root / "outputs" / "t" / "ingredients"
    infos = [json.loads((ingredients / n / "ingredient.json").read_text()) for n in ("ft_000", "ft_001")]
    assert [i["sweep"]["index"] for i in infos] == [0, 1]
    assert infos[0]["hparams"]["lr"] != infos[1]["hparams"]["lr"]
    for info in infos:
        assert info["kind"] == "finetune" and 0.0 <= info["held_out_accuracy"] <= 1.0
        assert set(load_file(str(ingredients / info["name"] / "model.safetensors"))) == \
            set(load_file(str(lp / "model.safetensors")))
    assert list((tiny_root / "outputs" / "t" / "hydra").rglob(".submitit")), "jobs did not go through submitit"
    # the launcher said which jobs it submitted, where each logs, and how they went
    shown = done.stdout + done.stderr
    assert "submitted 2 jobs (local)" in shown and shown.count("_log.out (stderr: ") == 2
    assert "#0 " in shown and "sweep.index=0" in shown and "2/2 done" in shown
    assert not list((tiny_root / "outputs").rglob("%j")), "submitit left a literal %j folder"


def test_progress_line_is_the_last_bar_a_job_wrote(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from hydra_plugins.soup_exp_launchers.watched import latest_progress, status_line

    err = tmp_path / "1_0_log.err"
    err.write_text("loading\nft_000:  10%|#  | 1/10\rft_000:  40%|####  | 4/10 [00:02<00:03]\r")
    assert latest_progress(err) == "ft_000:  40%|####  | 4/10 [00:02<00:03]"
    assert latest_progress(tmp_path / "absent.err") == ""
    jobs = [SimpleNamespace(paths=SimpleNamespace(stderr=err)), SimpleNamespace(paths=SimpleNamespace(stderr=err)),
            SimpleNamespace(paths=SimpleNamespace(stderr=tmp_path / "2_0_log.err"))]
    line = status_line(jobs, ["#0 sweep.index=0", "#1 sweep.index=1", "#2 sweep.index=2"],
                       ["RUNNING", "FINISHED", "FAILED"], elapsed=75)
    assert line.splitlines()[0] == "[1:15] 1/3 done, 1 failed, 1 running"
    assert "#0 running: ft_000:  40%" in line and f"#2 failed: see {tmp_path / '2_0_log.err'}" in line
