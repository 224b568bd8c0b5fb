"""W&B runs: offline runs can be read back, disabled writes nothing, failures never raise."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from soup_exp.errors import ConfigError
from soup_exp.tracking import wandb_run
from soup_exp.tracking.offline_runs import WandbFileError, read_offline_run
from soup_exp.tracking.wandb_run import Run, scrub_secrets, start_run

SECRET = "s3cr3t-api-key-value-0123456789abcdef"


def _cfg(tmp_path, mode="offline", **extra):
    return OmegaConf.create({
        "name": "exp",
        "out_dir": str(tmp_path / "out"),
        "train": {"lr": 1e-5, "hf_token": "tok-should-vanish"},
        "notes": f"pasted {SECRET} by mistake",
        "logger": {"mode": mode, "project": "soup-test", "entity": None, "group": "${name}",
                   "tags": ["t1"], "dir": "${out_dir}", **extra},
    })


def test_offline_run_logs_metrics_tables_and_clean_config(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", SECRET)
    run = start_run(_cfg(tmp_path), stage="finetune", name="job-3", group="sweep-a")
    assert run.enabled and not run.started and run.dir is None  # W&B starts at the first thing logged
    run.log({"train/loss": 2.0, "lr": 1e-5}, step=0)
    assert run.started and run.dir is not None and run.dir.is_dir()
    run.log({"train/loss": 1.5}, step=1)
    run.log_table("greedy/history", ["candidate", "held_out", "accepted"], [["a", 0.5, True], ["b", 0.4, False]])
    run.summary({"held_out": 0.81})
    run.finish()
    run.finish()  # idempotent

    logged = read_offline_run(run.dir)
    assert logged.name == "job-3" and logged.group == "sweep-a" and logged.job_type == "finetune"
    assert set(logged.tags) == {"t1", "finetune"}
    assert logged.metric("train/loss") == [2.0, 1.5]
    assert logged.summary["held_out"] == pytest.approx(0.81)
    assert logged.config["stage"] == "finetune"
    assert logged.config["train"]["lr"] == pytest.approx(1e-5)
    assert "hf_token" not in logged.config["train"]
    assert logged.config["notes"] == wandb_run.REDACTED
    assert logged.config["logger"]["group"] == "exp"  # resolved
    tables = list((run.dir / "files" / "media" / "table").rglob("*.table.json"))
    assert len(tables) == 1
    for path in run.dir.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
            assert b"tok-should-vanish" not in path.read_bytes(), path


def test_disabled_writes_nothing(tmp_path):
    run = start_run(_cfg(tmp_path, mode="disabled"), stage="soup", name="uniform")
    assert not run.enabled and run.dir is None
    with run:
        run.log({"a": 1}, step=0)
        run.log_table("t", ["x"], [[1]])
        run.log_image("img", tmp_path / "missing.png")
        run.summary({"b": 2})
    assert list(tmp_path.iterdir()) == []


def test_init_failure_warns_and_continues(tmp_path, monkeypatch):
    import wandb

    def broken_init(**kwargs):
        raise TimeoutError("no network")

    monkeypatch.setattr(wandb, "init", broken_init)
    run = start_run(_cfg(tmp_path), stage="evaluate", name="eval")
    with pytest.warns(UserWarning, match="could not start"):
        run.log({"a": 1})
    assert not run.enabled
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run.log({"a": 2})
    run.finish()


def test_a_run_that_logs_nothing_writes_nothing(tmp_path, monkeypatch):
    """A stage whose work was all done already finishes its run having logged nothing:
    wandb.init is never called and no run directory appears."""
    import wandb

    calls = []
    monkeypatch.setattr(wandb, "init", lambda **kwargs: calls.append(kwargs))
    with start_run(_cfg(tmp_path), stage="soup", name="exp-soup") as run:
        assert run.enabled
    assert calls == [] and not (tmp_path / "out").exists()


def test_failure_mid_run_turns_run_into_noop():
    class Flaky:
        id = "x"
        settings = None
        calls = 0

        def log(self, *args, **kwargs):
            Flaky.calls += 1
            raise ConnectionError("service died")

        def finish(self, exit_code=0):
            pass

    run = Run(Flaky(), mode="online")
    with pytest.warns(UserWarning, match="tracking is off"):
        run.log({"a": 1})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run.log({"a": 2})
    assert Flaky.calls == 1 and not run.enabled


def test_online_without_api_key_falls_back_to_offline(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    with pytest.warns(UserWarning, match="WANDB_API_KEY is not set"):
        run = start_run(_cfg(tmp_path, mode="online"), stage="report", name="r")
    run.summary({"x": 1})
    run.finish()
    assert run.mode == "offline" and run.dir.name.startswith("offline-run-")


def test_api_key_in_logger_config_is_ignored(tmp_path):
    with pytest.warns(UserWarning, match="WANDB_API_KEY environment variable only"):
        run = start_run(_cfg(tmp_path, api_key="abc12345678"), stage="report", name="r")
    run.summary({"x": 1})
    run.finish()
    assert "api_key" not in read_offline_run(run.dir).config["logger"]


def test_unknown_mode_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="logger.mode"):
        start_run(_cfg(tmp_path, mode="sometimes"), stage="report", name="r")


def test_scrub_secrets_nested():
    cfg = {"a": {"API_KEY": "x", "Password": "y", "keep": [{"secret_sauce": 1, "v": "has XYZ123 in it"}]},
           "access_token": "z", "lr": 0.1}
    assert scrub_secrets(cfg, ["XYZ123"]) == {"a": {"keep": [{"v": wandb_run.REDACTED}]}, "lr": 0.1}


def test_reader_handles_records_larger_than_a_block(tmp_path):
    run = start_run(_cfg(tmp_path), stage="soup", name="big")
    long_text = "x" * 100_000
    run.summary({"blob": long_text})
    for step in range(3):
        run.log({"acc": step / 10}, step=step)
    run.finish()
    logged = read_offline_run(run.dir)
    assert logged.summary["blob"] == long_text
    assert logged.metric("acc") == [0.0, 0.1, 0.2]


def test_reader_rejects_non_wandb_files(tmp_path):
    bad = tmp_path / "run-x.wandb"
    bad.write_bytes(b"not a wandb file")
    with pytest.raises(WandbFileError, match="header"):
        read_offline_run(tmp_path, timeout=0)
    with pytest.raises(WandbFileError, match="no run-"):
        read_offline_run(tmp_path / "nothing", timeout=0)


def test_missing_image_warns_but_keeps_tracking(tmp_path):
    run = start_run(_cfg(tmp_path), stage="report", name="r")
    with pytest.warns(UserWarning, match="no file at"):
        run.log_image("figure", tmp_path / "missing.png")
    run.log({"still": 1.0}, step=0)
    run.finish()
    assert read_offline_run(run.dir).metric("still") == [1.0]


def test_a_user_whose_home_is_not_writable_gets_a_quiet_offline_run(tmp_path):
    """A cluster account with a shared, read-only or missing $HOME: W&B's per-user folders
    go under the run directory, and the stage prints no page of permission errors."""
    import json
    import os
    import subprocess
    import sys

    from child_process import NOBODY, interpreter_runs_as_nobody, shared_dir

    if os.geteuid() != 0:
        pytest.skip("needs root to run as another user")
    if not interpreter_runs_as_nobody():
        pytest.skip(f"user nobody cannot start {sys.executable} (a folder on its path is private to root)")
    with shared_dir() as root:
        home = root / "home"
        home.mkdir(mode=0o700)
        script = (
            "import json, os, sys\n"
            "from omegaconf import OmegaConf\n"
            "from soup_exp.tracking.wandb_run import start_run, _HOME_DIRS\n"
            "run = start_run(OmegaConf.create(json.loads(sys.argv[1])), stage='soup', name='uniform')\n"
            "run.log({'x': 1.0}, step=0)\n"
            "enabled, run_dir = run.started, str(run.dir)\n"
            "run.finish()\n"
            "print(json.dumps({'enabled': enabled, 'dir': run_dir,\n"
            "                  'env': {v: os.environ.get(v) for v in _HOME_DIRS}}))\n"
        )
        env = {k: v for k, v in os.environ.items() if k not in wandb_run._HOME_DIRS and not k.startswith("WANDB")}
        cfg = OmegaConf.to_container(_cfg(root), resolve=True)
        done = subprocess.run([sys.executable, "-c", script, json.dumps(cfg)], env={**env, "HOME": str(home)},
                              user=NOBODY, group=NOBODY, cwd=root, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-3000:]
        assert "permission denied" not in done.stderr.lower(), done.stderr[-3000:]
        result = json.loads(done.stdout.strip().splitlines()[-1])
        assert result["enabled"], done.stderr[-3000:]
        assert read_offline_run(Path(result["dir"])).metric("x") == [1.0]
        for variable, value in result["env"].items():
            assert value.startswith(str(root / "out" / "wandb" / "home")), variable
