"""Secrets given as overrides (also nested in a value, or as a ``hydra.job.env_set`` entry)
reach every stage's config but no file the run leaves behind: ingredient.json,
pipeline.json, Hydra's saved configs (.hydra/*.yaml, multirun.yaml), submitit's job
pickles, W&B runs and the logs. A secret written in a config file, and the value of
WANDB_API_KEY pasted into one, are kept out of all of them too."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from soup_exp.utils.config import SECRETS_ENV

SECRETS = ("TOPSECRET-hf-0123456789", "KEYSECRET-wandb-0123456789", "FILESECRET-0123456789",
           "NESTEDSECRET-0123456789", "ENVSETSECRET-0123456789", "WANDBVALUE-0123456789abcdef")


@pytest.mark.slow
def test_pipeline_keeps_secrets_out_of_every_file(tiny_root: Path, tiny_cli_overrides) -> None:
    conf = tiny_root / "conf" / "experiment"
    conf.mkdir(parents=True)
    (conf / "leaky.yaml").write_text(f"# @package _global_\nmodel:\n  hf_token: {SECRETS[2]}\n"
                                     f"pasted_login: 'wandb login {SECRETS[5]}'\n")
    overrides = tiny_cli_overrides(tiny_root, "experiment=leaky", "logger=wandb", "launcher=submitit_local",
                                   "hydra.launcher.timeout_min=10", "pipeline.stages=[finetune]",
                                   "pipeline.sweep=demo", "pipeline.sweep_size=1",
                                   f"+hf_token={SECRETS[0]}", f"+logger.api_key={SECRETS[1]}",
                                   f"+creds={{token:{SECRETS[3]}}}", f"+hydra.job.env_set.HF_TOKEN={SECRETS[4]}")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "WANDB_API_KEY": SECRETS[5]}
    env.pop(SECRETS_ENV, None)
    done = subprocess.run([sys.executable, "-m", "soup_exp.pipeline", "--config-dir", str(tiny_root / "conf"),
                           *overrides], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]

    out = tiny_root / "outputs" / "t"
    names = {p.name for p in out.rglob("*") if p.is_file()}
    assert {"ingredient.json", "pipeline.json", "config.yaml", "hydra.yaml", "overrides.yaml",
            "multirun.yaml"} <= names
    assert len(list(out.rglob("ingredient.json"))) == 3  # zero-shot, LP init, ft_000
    submitit_files = [p for p in out.rglob("*") if ".submitit" in p.parts]
    assert [p for p in submitit_files if p.suffix == ".pkl"] and len(list((out / "wandb").glob("offline-run-*"))) == 3
    leaks = {str(p.relative_to(out)) for p in out.rglob("*")
             if p.is_file() and any(s.encode() in p.read_bytes() for s in SECRETS)}
    assert leaks == set()
    assert not any(s in done.stdout + done.stderr for s in SECRETS)
    # ... though the stages were given them, the sweep's submitit job included:
    warning = "the logger config holds a key/token entry"
    assert warning in done.stderr
    assert [warning in log.read_text() for log in submitit_files if log.name.endswith("_log.err")] == [True]
