"""The smoke experiment end to end through the real CLI, and its outputs' contracts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors import safe_open

RESULT_KEYS = ["ImageNet2p", "ImageNet", "ImageNetV2", "ImageNetSketch", "ImageNetR",
               "ObjectNet", "ImageNetA", "avg_shifts"]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    root = tmp_path_factory.mktemp("smoke")
    env = {**os.environ, "SOUP_ROOT": str(root), "SOUP_CACHE_DIR": str(root / "cache"),
           "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    env.pop("SOUP_OUTPUT_DIR", None)
    result = subprocess.run(
        [sys.executable, "-m", "soup_exp.cli", "pipeline", "experiment=smoke"],
        cwd=root, env=env, capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-6000:]
    return root / "outputs" / "smoke", result


@pytest.mark.slow
def test_smoke_ingredients_follow_the_contract(smoke_run):
    out, _ = smoke_run
    runs = sorted(p for p in (out / "ingredients").iterdir() if p.is_dir())
    assert len(runs) >= 3  # LP init + the sweep
    for run in runs:
        meta = json.loads((run / "ingredient.json").read_text())
        assert meta["name"] == run.name
        assert meta["kind"] in {"lp", "finetune"}
        assert 0.0 <= meta["held_out_accuracy"] <= 1.0
        for key in ("base_model", "hparams", "config", "code_version", "classes"):
            assert key in meta
        with safe_open(run / "model.safetensors", "pt") as f:
            stored = list(f.keys())
        assert "head.weight" in stored
    assert (out / "zeroshot" / "model.safetensors").exists()


@pytest.mark.slow
def test_smoke_soups_results_report_and_wandb(smoke_run):
    out, result = smoke_run
    for recipe in ("uniform", "greedy", "learned_by_layer", "learned_per_model", "ensemble"):
        soup = json.loads((out / "soups" / recipe / "soup.json").read_text())
        assert soup["ingredients"], recipe
    assert (out / "soups" / "greedy" / "model.safetensors").exists()

    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    names = {r["name"] for r in rows}
    assert {"zeroshot", "lp_init"} <= names
    assert any(r["kind"] == "soup" for r in rows) and any(r["kind"] == "ensemble" for r in rows)
    for row in rows:
        for key in RESULT_KEYS:
            assert 0.0 <= row[key] <= 1.0, (row["name"], key)

    report = out / "report"
    for suffix in ("md", "tex", "csv"):
        assert (report / f"table.{suffix}").stat().st_size > 0
    assert list(report.rglob("*.png"))
    assert list((out / "wandb").glob("offline-run-*"))
    assert "finished in" in result.stdout


@pytest.mark.slow
def test_smoke_runs_every_analysis_into_the_report(smoke_run):
    out, _ = smoke_run
    analyses = out / "report" / "analysis"
    names = ("landscape", "angles", "num_ingredients", "greedy_ablation", "calibration")
    for name in names:
        record = json.loads((analyses / name / "analysis.json").read_text())
        pngs = [o for o in record["outputs"] if o.endswith(".png")]
        assert pngs, name
        for png in pngs:  # each figure in both formats, its data beside it
            stem = png[: -len(".png")]
            assert all((analyses / name / f"{stem}.{x}").stat().st_size > 0 for x in ("png", "pdf", "csv"))
    index = (out / "report" / "analyses.md").read_text()
    assert all(f"](analysis/{name}/" in index for name in names)


@pytest.mark.slow
def test_smoke_figures_are_real_images(smoke_run):
    from PIL import Image

    out, _ = smoke_run
    pngs = sorted((out / "report").rglob("*.png"))
    assert any(p.name.startswith("figure1") for p in pngs)
    assert any(p.name.startswith("greedy_trajectory") for p in pngs)
    for png in pngs:
        with Image.open(png) as image:
            width, height = image.size
            # a by-layer coefficient map grows with the layers, so every layer keeps a readable label
            assert width == 960 and (height == 720 or (png.name.startswith("coefficients_") and height > 720)), png
            lo, hi = image.convert("L").getextrema()
            assert hi - lo > 50, f"{png} is blank"
        assert png.with_suffix(".pdf").stat().st_size > 0


@pytest.mark.slow
def test_smoke_logs_an_offline_wandb_run_per_stage(smoke_run):
    from soup_exp.tracking.offline_runs import read_offline_run

    out, _ = smoke_run
    runs = [read_offline_run(d) for d in sorted((out / "wandb").glob("offline-run-*"))]
    by_stage: dict[str, list] = {}
    for run in runs:
        by_stage.setdefault(run.job_type, []).append(run)
    assert set(by_stage) == {"finetune", "soup", "evaluate", "analyze", "report"}
    assert all(run.group == "smoke" for run in runs)
    finetunes = {run.name: run for run in by_stage["finetune"]}
    assert {"zeroshot", "lp_init"} <= set(finetunes)
    for run in finetunes.values():
        assert 0.0 <= run.summary["held_out_accuracy"] <= 1.0
    assert any(run.history for run in finetunes.values())  # training curves
    evaluation = by_stage["evaluate"][0]
    assert 0.0 <= evaluation.summary["lp_init/ImageNet"] <= 1.0


@pytest.mark.slow
def test_smoke_rerun_adds_no_wandb_run_and_soup_exp_runs_lists_every_stage(smoke_run):
    """The pipeline run again with everything done writes no W&B run (the issue: 13 became
    16); `soup-exp runs` shows the runs there are, one block per run."""
    from soup_exp.tracking.offline_runs import run_dirs

    out, first = smoke_run
    before = run_dirs(out / "wandb")
    root = out.parent.parent
    env = {**os.environ, "SOUP_ROOT": str(root), "SOUP_CACHE_DIR": str(root / "cache"),
           "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    env.pop("SOUP_OUTPUT_DIR", None)
    again = subprocess.run([sys.executable, "-m", "soup_exp.cli", "pipeline", "experiment=smoke"],
                           cwd=root, env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stdout[-4000:] + again.stderr[-6000:]
    assert run_dirs(out / "wandb") == before, [d.name for d in run_dirs(out / "wandb")]
    listed = subprocess.run([sys.executable, "-m", "soup_exp.cli", "runs", "experiment=smoke"],
                            cwd=root, env=env, capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.startswith(f"W&B runs in {out / 'wandb'}: {len(before)} ")
    stages = [block.split()[0] for block in listed.stdout.split("\n\n")[1:]]
    assert set(stages) == {"finetune", "soup", "evaluate", "analyze", "report"} and len(stages) == len(before)
