"""A signal to `soup-exp pipeline` reaches the job it is waiting for, and the pipeline waits
for that job to stop: nothing is left running on its own."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest


def _children(pid: int) -> list[tuple[int, str]]:
    found = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines() if ":\t" in line)
            if int(fields["PPid"]) == pid:
                cmdline = (status.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                found.append((int(status.parent.name), cmdline))
        except (OSError, KeyError, ValueError):
            continue
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return not Path(f"/proc/{pid}/status").read_text().count("State:\tZ")


@pytest.mark.slow
def test_sigterm_to_the_pipeline_stops_its_sweep_child_and_waits_for_it(tmp_path: Path) -> None:
    env = {**os.environ, "SOUP_ROOT": str(tmp_path), "SOUP_CACHE_DIR": str(tmp_path / "cache"),
           "OMP_NUM_THREADS": "1"}
    env.pop("SOUP_OUTPUT_DIR", None)
    pipeline = subprocess.Popen(
        [sys.executable, "-m", "soup_exp.cli", "pipeline", "experiment=smoke", "logger=disabled",
         "pipeline.stages=[data,finetune]", "train.epochs=60"],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        sweep = []
        while not sweep and time.monotonic() < deadline and pipeline.poll() is None:
            sweep = [pid for pid, cmd in _children(pipeline.pid) if "soup_exp.finetune --multirun" in cmd]
            time.sleep(0.5)
        assert sweep, "the pipeline never started its sweep"
        time.sleep(8)  # into the first member's training
        pipeline.send_signal(signal.SIGTERM)
        _, err = pipeline.communicate(timeout=120)
    finally:
        if pipeline.poll() is None:
            pipeline.kill()
    assert pipeline.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert not _alive(sweep[0]), "the sweep child outlived the pipeline"
    assert err.strip().splitlines()[-1] == ("soup-exp pipeline: stopped during fine-tuning sweep of 2 runs "
                                            "(SIGTERM); rerun the same command to resume"), err[-3000:]
