"""The demo: `sweep.seed` reaches the sweep it runs, and the paper's effect holds with margin."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

import soup_exp.pipeline as pipeline
from soup_exp.stages.entry import packaged_config_dir
from soup_exp.training.sweep import apply_sweep

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "demo_seeds.py"
MARGIN = 0.25  # points: 3 of 1,200 held-out images


def multirun_command(monkeypatch, overrides: list[str]) -> list[str]:
    """The fine-tuning multirun the pipeline launches for ``overrides`` (nothing is trained)."""
    launched: list[list[str]] = []
    monkeypatch.setattr(pipeline, "run_forwarding_signals", lambda command: launched.append(command) or 0)
    stage = pipeline.STAGES["finetune"]
    monkeypatch.setattr(importlib.import_module(stage.module), stage.function, lambda cfg: None)
    cfg = compose(config_name="pipeline", overrides=overrides)
    pipeline.run_finetunes(cfg, overrides)
    (command,) = launched
    return command


def member_draws(command: list[str], index: int) -> dict:
    overrides = [o for o in command[command.index("--multirun") + 1:] if not o.startswith("sweep.index=")]
    cfg = compose(config_name="finetune", overrides=[*overrides, f"sweep.index={index}"])
    return apply_sweep(cfg).drawn


def test_pipeline_sweep_seed_reaches_and_changes_the_sweep(monkeypatch):
    with initialize_config_dir(config_dir=str(packaged_config_dir()), version_base="1.3"):
        default = multirun_command(monkeypatch, ["experiment=demo"])
        seeded = multirun_command(monkeypatch, ["experiment=demo", "sweep.seed=3", "name=demo-seed3"])
        assert "sweep.seed=3" in seeded and "sweep=demo" in seeded
        for index in (0, 5):
            assert member_draws(default, index) != member_draws(seeded, index)
        assert member_draws(seeded, 5) == member_draws(seeded, 5)



def test_pipeline_hands_search_space_changes_to_every_member(monkeypatch):
    """The pipeline's own config holds no search space, so a change to it is written with
    Hydra's ``++`` (add or override) and reaches each member's draw."""
    with initialize_config_dir(config_dir=str(packaged_config_dir()), version_base="1.3"):
        default = multirun_command(monkeypatch, ["experiment=demo"])
        wider = multirun_command(monkeypatch, ["experiment=demo", "++sweep.space.lr.high=9e-3"])
        assert "++sweep.space.lr.high=9e-3" in wider
        for index in range(4):
            assert member_draws(wider, index)["lr"] > member_draws(default, index)["lr"]

@pytest.mark.slow
def test_demo_effect_holds_with_margin_for_two_seeds(tmp_path, monkeypatch):
    """The demo itself, for two sweep seeds: the paper's effect, each claim with a margin
    of several held-out images (1 of the 1,200 held-out images is 0.083 points)."""
    monkeypatch.setenv("SOUP_ROOT", str(tmp_path))
    summary = tmp_path / "seeds.json"
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--seeds", "0", "1", "--json", str(summary),
         "logger=disabled", "progress=false"],
        cwd=tmp_path, capture_output=True, text=True, timeout=1800,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    per_seed = {seed: {c["name"]: c["margin"] for c in claims}
                for seed, claims in json.loads(summary.read_text())["claims"].items()}
    for seed, margins in per_seed.items():
        assert margins["greedy_keeps_2"] >= 0.5, (seed, margins)
        assert margins["greedy_heldout"] >= MARGIN, (seed, margins)
        assert margins["uniform_shifts"] >= MARGIN, (seed, margins)
        assert margins["finetunes_in"] >= MARGIN, (seed, margins)
    assert any(margins["greedy_in"] > 0 for margins in per_seed.values()), per_seed
