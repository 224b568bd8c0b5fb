"""A ``train.*`` value on the command line that the sweep member draws itself is replaced by
the drawn value; the run's log and the dry-run plan say so."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

from hydra import compose, initialize_config_dir

import soup_exp.finetune as finetune
from soup_exp.stages.entry import packaged_config_dir
from soup_exp.utils.config import SECRETS_ENV

OVERRIDES = ["experiment=smoke", "sweep=demo", "train.lr=0.1", "train.weight_decay=0.3", "train.epochs=1"]


def _cfg():
    with initialize_config_dir(config_dir=str(packaged_config_dir()), version_base="1.3"):
        return compose(config_name="finetune", overrides=OVERRIDES)


def test_the_run_logs_that_the_sweep_wins(monkeypatch, caplog):
    monkeypatch.setattr(finetune, "command_line_overrides", lambda: OVERRIDES)
    monkeypatch.setattr(finetune.store, "existing_ingredient", lambda out_dir, identity, written_before=None: {"done": True})
    with caplog.at_level(logging.WARNING, logger="soup_exp.finetune"):
        finetune.run_finetune(_cfg())
    notes = [r.getMessage() for r in caplog.records if "the sweep's value wins" in r.getMessage()]
    assert len(notes) == 2  # train.epochs is not drawn: the command line's value holds
    assert notes[0].startswith("train.lr=0.1 is replaced by sweep random ft_000's lr=")
    assert notes[1].startswith("train.weight_decay=0.3 is replaced by") and "~sweep.space.weight_decay" in notes[1]


def test_the_dry_run_plan_says_that_the_sweep_wins(tmp_path):
    env = {**os.environ, "SOUP_ROOT": str(tmp_path), "SOUP_CACHE_DIR": str(tmp_path / "cache")}
    env.pop(SECRETS_ENV, None)
    done = subprocess.run([sys.executable, "-m", "soup_exp.finetune", *OVERRIDES, "train.init_from=null",
                           "--dry-run"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "train.lr=0.1 is replaced by sweep random ft_000's lr=" in done.stdout
    assert "the sweep's value wins (remove lr from the sweep, ~sweep.space.lr, to use yours)" in done.stdout
    assert "epochs=1," in done.stdout and "train.epochs=1 is replaced" not in done.stdout
