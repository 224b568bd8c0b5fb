"""`soup-exp <stage> --help` says what the stage does, fast; Ctrl-C is one line, not a traceback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from soup_exp.stages.entry import INTERRUPTED_EXIT, STAGES


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("stage", list(STAGES))
def test_stage_help_says_what_the_stage_does_and_how_to_see_the_whole_config(stage):
    result = _run("-m", "soup_exp.cli", stage, "--help")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"usage: soup-exp {stage}")
    assert "main options:" in lines and "examples:" in lines
    assert f"soup-exp {stage}" in result.stdout.split("examples:")[1]
    assert "--cfg job" in result.stdout
    assert len(lines) < 60  # a page, not Hydra's config dump
    assert "defaults" not in result.stdout and "hydra:" not in result.stdout


def test_stage_help_imports_neither_torch_nor_hydra():
    probe = ("import sys; from soup_exp import cli; cli.main(['soup', '--help']); "
             "print('heavy:', sorted(m for m in ('torch', 'hydra', 'open_clip') if m in sys.modules))")
    result = _run("-c", probe)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("heavy: []")


def test_module_entry_point_prints_the_same_help():
    assert _run("-m", "soup_exp.soup", "-h").stdout == _run("-m", "soup_exp.cli", "soup", "-h").stdout


def test_ctrl_c_is_one_line_and_exit_130(tmp_path):
    """A real SIGINT while a stage runs: the stage's line, no KeyboardInterrupt traceback."""
    script = tmp_path / "slow_stage.py"
    script.write_text(textwrap.dedent("""
        import sys, time
        from soup_exp.stages import entry

        def slow(cfg):
            print("running", flush=True)
            time.sleep(60)

        entry.Stage.run = lambda self: slow
        sys.argv = ["soup-exp report", "results=paper_vitb32", "logger=disabled",
                    f"paths.output_dir={sys.argv[1]}"]
        entry.stage_entry("report")()
    """))
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "out")], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        assert proc.stdout.readline().strip() == "running"
        time.sleep(0.2)
        os.kill(proc.pid, signal.SIGINT)
        _, stderr = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == INTERRUPTED_EXIT
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
    assert stderr.strip().splitlines()[-1] == "soup-exp report: interrupted; rerun the same command to resume"
