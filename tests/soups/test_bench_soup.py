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
