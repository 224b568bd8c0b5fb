import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_train.py"


def test_bench_train_composes_the_finetune_config_and_reports_the_ratio(tmp_path):
    out = tmp_path / "bench.json"
    subprocess.run(
        [sys.executable, str(SCRIPT), "--model", "tiny_clip", "--batch", "4", "--device", "cpu",
         "--workers", "0", "--threads", "1", "--warmup", "1", "--steps", "2", "--files", "3",
         "--json", str(out)],
        check=True, capture_output=True, text=True, timeout=120,
    )
    figures = json.loads(out.read_text())
    assert figures["model"] == "tiny_clip" and figures["batch"] == 4 and figures["steps"] == 2
    assert figures["real_images_per_s"] > 0 and figures["in_memory_images_per_s"] > 0
    # exact figures in the file, so the ratio is checked exactly (rounded ones would differ by chance)
    assert figures["ratio"] == figures["real_images_per_s"] / figures["in_memory_images_per_s"]
