import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_soup.py"


@pytest.mark.slow
def test_bench_soup_smoke(tmp_path):
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--n", "2", "--model", "soup-tiny-vit", "--classes", "4",
         "--dir", str(tmp_path), "--threads", "1", "--skip", "cold", "greedy", "learned"],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert "| uniform warm vs raw read |" in out.stdout
    assert "| uniform peak RSS vs one ingredient |" in out.stdout


@pytest.mark.slow
def test_bench_soup_learned_step_alone_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "--n", "2", "--learned-n", "2", "--model", "soup-tiny-vit", "--classes", "4",
         "--batch", "2", "--steps", "2", "--dir", str(tmp_path / "ingredients"), "--threads", "1",
         "--skip", "cold", "uniform", "greedy", "--json", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stderr
    figures = json.loads(out.read_text())
    (row,) = figures["rows"]
    assert row[0].startswith("learned step (N=2, batch 2)")
    learned = figures["raw"]["learned_auto"]
    assert learned["placement"] == "device" and learned["steps"] == 2  # --steps + 1 batches, timed between steps
    assert "uniform_warm" not in figures["raw"]


def test_bench_soup_refuses_pinned_host_on_cpu(tmp_path):
    run = subprocess.run([sys.executable, str(SCRIPT), "--dir", str(tmp_path), "--placements", "pinned_host"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "needs a CUDA --device" in run.stderr


@pytest.mark.slow
def test_bench_soup_measures_each_merge_at_each_pool_size(tmp_path):
    out = tmp_path / "bench.json"
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "--n", "3", "--model", "soup-tiny-vit", "--classes", "4",
         "--dir", str(tmp_path / "ingredients"), "--threads", "1", "--skip", "cold", "uniform", "greedy", "learned",
         "--merge-n", "2", "3", "--merges", "model_stock", "ties_merging", "--json", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stderr
    figures = json.loads(out.read_text())
    assert [row[0] for row in figures["rows"]] == [
        "model_stock peak RSS vs one ingredient (N=2)", "model_stock peak RSS vs one ingredient (N=3)",
        "model_stock peak RSS growth from N=2 to N=3, in ingredients",
        "ties_merging peak RSS vs one ingredient (N=2)", "ties_merging peak RSS vs one ingredient (N=3)",
        "ties_merging peak RSS growth from N=2 to N=3, in ingredients"]
    assert figures["raw"]["merge_ties_merging_3"]["tensors"] == figures["raw"]["merge_model_stock_2"]["tensors"] > 0


def test_bench_soup_refuses_a_merge_pool_larger_than_its_ingredients(tmp_path):
    run = subprocess.run([sys.executable, str(SCRIPT), "--dir", str(tmp_path), "--n", "4", "--merge-n", "8"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "--merge-n: every size must be at most --n (4)" in run.stderr
