import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_eval.py"


def test_bench_eval_runs_and_reports_consistent_ratios(tmp_path):
    out = tmp_path / "bench.json"
    subprocess.run(
        [sys.executable, str(SCRIPT), "--n", "12", "--size", "64", "48", "--models", "tiny",
         "--device", "cpu", "--workers", "0", "--batch-size", "5", "--repeats", "1", "--threads", "1",
         "--work-dir", str(tmp_path / "work"), "--json", str(out)],
        check=True, capture_output=True, text=True, timeout=120,
    )
    (result,) = json.loads(out.read_text())["results"]
    assert result["model"] == "tiny" and result["images"] == 12
    assert result["cache_bytes"] == 12 * 3 * 32 * 32
    assert result["b_over_c"] == pytest.approx(result["b_cache_img_s"] / result["c_model_img_s"])
    assert result["b_over_a"] == pytest.approx(result["b_cache_img_s"] / result["a_decode_img_s"])
    assert len(list((tmp_path / "work" / "jpegs").glob("*.jpg"))) == 12
