"""The real command line: hostile names write nothing anywhere; secret overrides travel in
the environment, not in configs; an experiment's output directory refuses another model.
(Secrets end to end: tests/training/test_secrets.py.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from child_process import run_in_child, shared_dir
from hydra import compose, initialize_config_dir
from stage_errors import stage_error

from soup_exp.errors import OutputConflictError
from soup_exp.evaluate import run_evaluate
from soup_exp.stages.entry import packaged_config_dir
from soup_exp.stages.experiment import claim_output_dir, experiment_identity, run_stage
from soup_exp.utils.config import (
    SECRETS_ENV,
    apply_secret_overrides,
    hand_over_secrets,
    loggable_config,
    split_secret_overrides,
)


def _cli(root: Path, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "SOUP_ROOT": str(root), "SOUP_CACHE_DIR": str(root / "cache"),
           "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    for key in ("SOUP_OUTPUT_DIR", SECRETS_ENV):
        env.pop(key, None)
    return subprocess.run([sys.executable, "-m", "soup_exp.cli", *args], cwd=root, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("override", ["name=../../escaped", "sweep.name=../.."])
def test_path_names_are_refused_before_anything_is_written(tmp_path, override):
    root = tmp_path / "deep" / "root"
    root.mkdir(parents=True)
    result = _cli(root, "finetune", "experiment=smoke", override, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("soup-exp finetune: error: ") and "is not a valid name" in lines[-1]
    assert "Traceback" not in result.stderr
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []  # not even Hydra's run directory


def test_secret_overrides_travel_in_the_environment(monkeypatch):
    monkeypatch.delenv(SECRETS_ENV, raising=False)
    args = ["experiment=demo", "+hf_token=abc", "++logger.api_key='x=y'", "~model.secret_sauce",
            "hydra.job.config.override_dirname.exclude_keys=[a]", "train.lr=0.1", "--multirun"]
    public, secret = split_secret_overrides(args)
    assert secret == ["+hf_token=abc", "++logger.api_key='x=y'"]
    assert public == ["experiment=demo", "~model.secret_sauce", "hydra.job.config.override_dirname.exclude_keys=[a]",
                      "train.lr=0.1", "--multirun"]
    hand_over_secrets(secret)
    hand_over_secrets(["+data.password=p4ss"])
    with initialize_config_dir(config_dir=str(packaged_config_dir()), version_base="1.3"):
        cfg = apply_secret_overrides(compose(config_name="soup"))
    assert (cfg.hf_token, cfg.logger.api_key, cfg.data.password) == ("abc", "x=y", "p4ss")
    plain = loggable_config(cfg)
    assert "hf_token" not in plain and "api_key" not in plain["logger"] and "password" not in plain["data"]


def _experiment(tmp_path, *overrides):
    with initialize_config_dir(config_dir=str(packaged_config_dir()), version_base="1.3"):
        return compose(config_name="evaluate", overrides=[f"paths.output_dir={tmp_path}", *overrides])


def test_an_output_directory_refuses_another_pretrained_start(tmp_path):
    claim_output_dir(_experiment(tmp_path, "experiment=smoke"))
    claim_output_dir(_experiment(tmp_path, "experiment=smoke"))
    with pytest.raises(OutputConflictError, match=r"(?s)\(model_id differ\).*soup-tiny-vit-smoke.safetensors"):
        claim_output_dir(_experiment(tmp_path, "experiment=demo", "name=smoke"))
    with pytest.raises(OutputConflictError, match="model, model_id differ"):
        claim_output_dir(_experiment(tmp_path, "experiment=smoke", "model=vit_b16"))


def test_markers_of_older_versions_are_completed(tmp_path):
    cfg = _experiment(tmp_path, "experiment=smoke")
    marker = tmp_path / "smoke" / "experiment.json"
    marker.parent.mkdir()
    old = {k: v for k, v in experiment_identity(cfg).items() if k != "model_id"}
    marker.write_text(json.dumps(old))
    claim_output_dir(cfg)
    assert '"model_id": "open_clip:soup-tiny-vit:soup-tiny-vit-smoke.safetensors"' in marker.read_text()


def test_a_read_only_output_root_is_one_line():
    with shared_dir() as root:
        (root / "ro").mkdir()
        (root / "ro").chmod(0o555)
        cfg = _experiment(root / "ro", "experiment=smoke")
        experiment_identity(cfg)  # imports what the child needs (it may not read the Python install)
        status, err = run_in_child(lambda: run_stage(cfg, run_evaluate), unprivileged=True)
    assert status == 2, err
    owner = ", it belongs to root" if os.geteuid() == 0 else ""
    assert err == (f"soup-exp evaluate: error: output directory {root}/ro/smoke cannot be written ({root}/ro is "
                   f"read-only for this user{owner}); choose another output root (paths.output_dir=... or "
                   "SOUP_OUTPUT_DIR)\n")


@pytest.mark.parametrize("mode", [0o555, 0o755])  # read-only; another user's (root's, run as nobody)
def test_an_existing_experiment_directory_that_cannot_be_written_is_one_line(mode):
    if os.geteuid() != 0 and mode == 0o755:
        pytest.skip("another user's directory needs root to set up")
    with shared_dir() as root:
        cfg = _experiment(root, "experiment=smoke")
        claim_output_dir(cfg)  # the experiment exists, with its marker
        (root / "smoke").chmod(mode)
        status, err = run_in_child(lambda: run_stage(cfg, run_evaluate), unprivileged=True)
    assert status == 2, err
    assert err.startswith(f"soup-exp evaluate: error: output directory {root}/smoke cannot be written "
                          f"({root}/smoke is read-only for this user") and err.count("\n") == 1, err
    assert "Traceback" not in err


def test_a_name_longer_than_a_folder_name_can_be_is_one_line(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    result = _cli(root, "finetune", "experiment=smoke", "name=" + "n" * 300, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1] == (
        "soup-exp finetune: error: name is 300 bytes long: names become folder names, which file systems "
        "limit to 255 bytes; choose a shorter name")
    assert "Traceback" not in result.stderr and [p for p in tmp_path.rglob("*") if p.is_file()] == []


def _no_stage(cfg):
    raise AssertionError("the stage started")


def test_a_cuda_device_on_a_machine_without_one_is_one_line_before_the_stage(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = _experiment(tmp_path, "experiment=smoke", "device=cuda")
    err = stage_error(cfg, _no_stage, capsys)
    assert err.startswith("soup-exp evaluate: error: device=cuda: torch sees no CUDA device on this machine")
    assert "use device=cpu, or device=auto" in err
    assert not (tmp_path / "smoke").exists()  # refused before the output directory was claimed


def test_a_cuda_index_beyond_the_machines_devices_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    err = stage_error(_experiment(tmp_path, "experiment=smoke", "device=cuda:2"), _no_stage, capsys)
    assert "device=cuda:2: this machine has 2 CUDA devices (cuda:0 to cuda:1)" in err


@pytest.mark.parametrize(("text", "line", "problem"), [
    ("# @package _global_\nname: broken\ntrain:\n  lr: [1, 2\n", 4, "while parsing a flow sequence; expected ','"),
    ("# @package _global_\nname: broken\n\ttrain: {}\n", 3, "found character '\\t' that cannot start any token"),
])
def test_broken_yaml_in_the_config_dir_is_one_line_naming_file_and_line(tmp_path, text, line, problem):
    conf = tmp_path / "conf" / "experiment"
    conf.mkdir(parents=True)
    (conf / "broken.yaml").write_text(text)
    result = _cli(tmp_path, "finetune", "--config-dir", str(tmp_path / "conf"), "experiment=broken", timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    (message,) = result.stderr.strip().splitlines()
    assert message.startswith(f"soup-exp finetune: error: {conf / 'broken.yaml'}, line {line}: broken YAML (")
    assert problem in message and message.endswith("fix the file")


@pytest.mark.parametrize(("override", "message"), [
    ("+eval.batchsize=3", "eval.batchsize is not a setting (did you mean eval.batch_size? known: batch_size, cache,"),
    ("+eval.cache.dri=x", "eval.cache.dri is not a setting (did you mean eval.cache.dir? known: dir, enabled)"),
    ("+soup.arithmetik=sum", "soup.arithmetik is not a setting (did you mean soup.arithmetic?"),
])
def test_an_unknown_key_in_a_stage_section_is_one_line_with_the_nearest_key(tmp_path, override, message):
    result = _cli(tmp_path, "evaluate", "experiment=smoke", override, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"soup-exp evaluate: error: {message}"), line
    assert list(tmp_path.rglob("*.json")) == []
