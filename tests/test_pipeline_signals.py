"""A signal to `soup-exp pipeline` reaches the job it is waiting for, and the pipeline waits
for that job to stop: nothing is left running on its own."""

from __future__ import annotations

import os
import re
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


COMMAND = [sys.executable, "-m", "soup_exp.cli", "pipeline", "experiment=smoke", "logger=disabled",
           "pipeline.stages=[data,finetune]", "train.epochs=60"]


def _environment(root: Path) -> dict[str, str]:
    env = {**os.environ, "SOUP_ROOT": str(root), "SOUP_CACHE_DIR": str(root / "cache"), "OMP_NUM_THREADS": "1"}
    env.pop("SOUP_OUTPUT_DIR", None)
    return env


TRAINING = "[soup_exp.training.loop][INFO] training "  # fit's first line; the LP init never logs it


def _wait_for(condition, what: str, process: subprocess.Popen, seconds: float = 300) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert process.poll() is None, f"the pipeline ended before {what}"
        assert time.monotonic() < deadline, f"no {what} after {seconds:.0f} s"
        time.sleep(0.3)


def _stop_during_sweep(root: Path, signum: signal.Signals) -> tuple[int, int, str]:
    """Run the smoke pipeline in ``root`` and send ``signum`` once the first sweep member has
    taken an optimiser step; ``(exit status, the sweep child's pid, stderr)``."""
    out, err = root / "pipeline.out", root / "pipeline.err"
    with open(out, "w") as stdout, open(err, "w") as stderr:
        pipeline = subprocess.Popen(COMMAND, cwd=root, env=_environment(root), stdout=stdout, stderr=stderr)
    try:
        sweep: list[int] = []

        def sweep_started() -> bool:
            sweep.extend(pid for pid, cmd in _children(pipeline.pid) if "soup_exp.finetune --multirun" in cmd)
            return bool(sweep)

        _wait_for(sweep_started, "sweep child", pipeline)
        _wait_for(lambda: TRAINING in out.read_text(), "training in the sweep", pipeline)
        bars_before = len(err.read_text())
        _wait_for(lambda: re.search(r"\| *[1-9]\d*/\d+ \[", err.read_text()[bars_before:]),
                  "training step", pipeline)  # the member's progress bar past step 0
        pipeline.send_signal(signum)
        pipeline.wait(timeout=120)
    finally:
        if pipeline.poll() is None:
            pipeline.kill()
    return pipeline.returncode, sweep[0], err.read_text()


def _stopped_line(signum: signal.Signals) -> str:
    return (f"soup-exp pipeline: stopped during fine-tuning sweep of 2 runs ({signum.name}); "
            "rerun the same command to resume")


@pytest.mark.slow
def test_sigterm_to_the_pipeline_stops_its_sweep_child_and_waits_for_it(tmp_path: Path) -> None:
    code, sweep, err = _stop_during_sweep(tmp_path, signal.SIGTERM)
    assert code == 128 + signal.SIGTERM, err[-3000:]
    assert not _alive(sweep), "the sweep child outlived the pipeline"
    assert err.strip().splitlines()[-1] == _stopped_line(signal.SIGTERM), err[-3000:]


@pytest.mark.slow
def test_sigint_to_the_pipeline_stops_its_sweep_child_in_one_line_and_a_rerun_resumes(tmp_path: Path) -> None:
    """Ctrl-C as a script sends it (to the pipeline alone): no traceback, the member's
    checkpoint is written, and the same command resumes from that step."""
    code, sweep, err = _stop_during_sweep(tmp_path, signal.SIGINT)
    assert code == 128 + signal.SIGINT, err[-3000:]
    assert not _alive(sweep), "the sweep child outlived the pipeline"
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-3000:]
    assert err.strip().splitlines()[-1] == _stopped_line(signal.SIGINT), err[-3000:]
    stopped = re.search(r"soup-exp finetune: stopped by SIGINT at step (\d+) \(checkpoint (\S+)\)", err)
    assert stopped and Path(stopped[2]).is_file(), err[-3000:]

    log = tmp_path / "rerun.out"
    with open(log, "w") as out:
        rerun = subprocess.Popen(COMMAND, cwd=tmp_path, env=_environment(tmp_path), stdout=out,
                                 stderr=subprocess.DEVNULL)
    try:
        _wait_for(lambda: TRAINING in log.read_text(), "training in the rerun", rerun)
        rerun.send_signal(signal.SIGINT)  # resuming is what is tested: stop again rather than train 60 epochs
        rerun.wait(timeout=120)
    finally:
        if rerun.poll() is None:
            rerun.kill()
    (training,) = [line for line in log.read_text().splitlines() if TRAINING in line]
    assert training.endswith(f"; resumed at step {stopped[1]}"), training
