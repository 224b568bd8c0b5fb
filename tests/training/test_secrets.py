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
from omegaconf import OmegaConf

from soup_exp.errors import ConfigError
from soup_exp.stages.experiment import KeepSecretsOut
from soup_exp.utils.config import (
    REDACTED,
    SECRETS_ENV,
    apply_secret_overrides,
    hand_over_secrets,
    is_secret_key,
    loggable_config,
    split_secret_overrides,
)

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
    # ... though every job was given them (submitit jobs: the zero-shot model, the LP init, ft_000):
    warning = "the logger config holds a key/token entry"
    job_logs = [log for log in submitit_files if log.name.endswith("_log.err")]
    assert len(job_logs) == 3 and all(warning in log.read_text() for log in job_logs)


# ---- the rule, and each way a secret could get in (fast) ------------------------------------


@pytest.mark.parametrize("key", ["hf_token", "api_key", "logger.api_key", "WANDB_API_KEY", "hf_auth", "credentials",
                                 "db.passwd", "password", "creds.user", "hfToken", "aws-secret-access-key",
                                 "private.apikey", "secret_sauce"])
def test_the_secret_rule_matches_secret_words(key) -> None:
    assert is_secret_key(key)


@pytest.mark.parametrize("key", ["train_token_embedding", "train.train_token_embedding", "num_tokens", "tokenizer",
                                 "keyframes", "monkey", "authors_check", "models_per_pass", "passes", "bypass",
                                 "token_file", "author"])
def test_the_secret_rule_leaves_other_words_alone(key) -> None:
    assert not is_secret_key(key)


def test_train_token_embedding_is_logged() -> None:
    assert loggable_config({"train": {"train_token_embedding": True, "hf_auth": "abc"}}) == {
        "train": {"train_token_embedding": True}}


def test_a_secret_nested_in_an_override_value_is_taken_off_the_command_line() -> None:
    args = ["+creds={token:X}", "+model.extra={hf_token:X}", "+logger={tags:[{auth:Y}]}", "+data.extra={a:1}",
            "train.lr=0.1"]
    public, secret = split_secret_overrides(args)
    assert secret == args[:3] and public == args[3:]


def test_a_hydra_env_set_secret_becomes_the_variable_itself(monkeypatch) -> None:
    monkeypatch.delenv(SECRETS_ENV, raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    public, secret = split_secret_overrides(["+hydra.job.env_set.HF_TOKEN=ENVSETSECRET-1", "hydra.job.chdir=false"])
    assert (public, secret) == (["hydra.job.chdir=false"], ["+hydra.job.env_set.HF_TOKEN=ENVSETSECRET-1"])
    hand_over_secrets(secret)
    assert os.environ["HF_TOKEN"] == "ENVSETSECRET-1" and SECRETS_ENV not in os.environ
    with pytest.raises(ConfigError, match=r"^hydra.launcher.api_key: Hydra saves its settings in hydra.yaml"):
        hand_over_secrets(split_secret_overrides(["+hydra.launcher.api_key=x"])[1])


def test_secret_values_are_taken_out_of_the_saved_config_and_handed_back(monkeypatch) -> None:
    """What Hydra saves (config.yaml, multirun.yaml) and submitit pickles is the config after
    KeepSecretsOut: no secret-named entry, no pasted WANDB_API_KEY; the stage gets both back."""
    monkeypatch.delenv(SECRETS_ENV, raising=False)
    monkeypatch.setenv("WANDB_API_KEY", SECRETS[5])
    cfg = OmegaConf.create({"model": {"hf_token": SECRETS[2], "name": "m"}, "creds": {"token": SECRETS[3]},
                            "pasted_login": f"wandb login {SECRETS[5]}", "from_env": "${oc.env:WANDB_API_KEY}",
                            "hydra": {"job": {"env_set": {"HF_TOKEN": SECRETS[4], "OMP_NUM_THREADS": "1"}}}})
    original = OmegaConf.to_container(cfg, resolve=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    KeepSecretsOut().on_run_start(config=cfg)
    saved = OmegaConf.to_yaml(cfg)
    assert not any(s in saved for s in SECRETS) and "OMP_NUM_THREADS" in saved and "oc.env:WANDB_API_KEY" in saved
    assert os.environ["HF_TOKEN"] == SECRETS[4]
    del cfg["hydra"]
    del original["hydra"]
    assert OmegaConf.to_container(apply_secret_overrides(cfg), resolve=False) == original


def test_a_pasted_api_key_is_redacted_in_what_is_logged(monkeypatch) -> None:
    monkeypatch.setenv("WANDB_API_KEY", SECRETS[5])
    cfg = {"pasted_login": f"wandb login {SECRETS[5]}", "model": {"hf_token": SECRETS[2]},
           "note": f"copied {SECRETS[2]}"}
    assert loggable_config(cfg) == {"pasted_login": REDACTED, "model": {}, "note": REDACTED}


APP = '''
import os

import hydra
from soup_exp.utils.config import apply_secret_overrides
from soup_exp.stages.experiment import scrub_hydra_files


@hydra.main(config_path=".", config_name="app", version_base="1.3")
def main(cfg):
    got = apply_secret_overrides(cfg)  # what run_stage does first
    scrub_hydra_files(got)
    print("received", got.model.hf_token, got.pasted_login, os.environ["HF_TOKEN"])


main()
'''


@pytest.mark.parametrize("mode", [[], ["-m", "+x=1,2"]])
def test_config_file_secrets_reach_the_job_but_no_file(tmp_path, mode) -> None:
    """Real Hydra with the KeepSecretsOut callback: a secret-named entry and a pasted
    WANDB_API_KEY value in a config file reach the job, not config.yaml, hydra.yaml or multirun.yaml."""
    (tmp_path / "app.py").write_text(APP)
    (tmp_path / "app.yaml").write_text(
        f"model:\n  hf_token: {SECRETS[2]}\npasted_login: wandb login {SECRETS[5]}\n"
        "hydra:\n  callbacks:\n    no_leaks:\n      _target_: soup_exp.stages.experiment.KeepSecretsOut\n"
        f"  run:\n    dir: {tmp_path}/out/run\n  sweep:\n    dir: {tmp_path}/out/multi\n"
        f"  job:\n    env_set:\n      HF_TOKEN: {SECRETS[4]}\n")
    env = {**os.environ, "WANDB_API_KEY": SECRETS[5]}
    env.pop(SECRETS_ENV, None)
    done = subprocess.run([sys.executable, str(tmp_path / "app.py"), *mode], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert done.stdout.count(f"received {SECRETS[2]} wandb login {SECRETS[5]} {SECRETS[4]}") == (2 if mode else 1)
    saved = [p for p in (tmp_path / "out").rglob("*.yaml")]
    assert {p.name for p in saved} >= {"config.yaml", "hydra.yaml", "overrides.yaml"} | (
        {"multirun.yaml"} if mode else set())
    assert not [p for p in saved if any(s in p.read_text() for s in SECRETS)]
