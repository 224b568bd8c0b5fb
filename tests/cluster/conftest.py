"""A real one-node SLURM for the cluster tests: the one running here, or the one
scripts/local_slurm.sh starts (as root, when Debian's packages are installed).

Without SLURM the tests skip and say why; with ``SOUP_REQUIRE_SLURM=1`` (CI) they fail.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from filelock import FileLock

sys.path.insert(0, str(Path(__file__).parent))

from slurm_helpers import answers, local_slurm  # noqa: E402
from tiny_finetune import write_tiny_imagenet  # noqa: E402

OURS = "written by soup-exp scripts/local_slurm.sh"


def _start_cluster() -> str | None:
    """Why no SLURM can be used here, or None once one answers (accounting on)."""
    if answers("sinfo") and answers("sacct", "-n", "-X", "-S", "now-1minutes"):
        return None
    if shutil.which("slurmctld") is None:
        return ("SLURM is not installed; `sudo scripts/local_slurm.sh start` installs Debian's slurm-wlm, "
                "slurmdbd, munge and mariadb-server and starts a one-node cluster")
    if os.geteuid() != 0:
        return "no SLURM controller answers, and starting one (scripts/local_slurm.sh start) needs root"
    try:
        local_slurm("start")
    except AssertionError as err:
        return f"scripts/local_slurm.sh start failed: {err}"
    return None


@dataclass(frozen=True)
class Cluster:
    partition: str
    ours: bool  # started by scripts/local_slurm.sh: the tests may restart it without accounting


@pytest.fixture(scope="session")
def slurm_cluster() -> Cluster:
    reason = _start_cluster()
    if reason is not None:
        if os.environ.get("SOUP_REQUIRE_SLURM") == "1":
            pytest.fail(f"SOUP_REQUIRE_SLURM=1 but {reason}")
        pytest.skip(reason)
    conf = Path("/etc/slurm/slurm.conf")
    ours = conf.is_file() and OURS in conf.read_text()
    default = next(line.split("|")[0].rstrip("*") for line in subprocess.run(
        ["sinfo", "-h", "-o", "%P|"], capture_output=True, text=True, timeout=120).stdout.split() if "*" in line)
    return Cluster(partition=default, ours=ours)


@pytest.fixture
def slurm(slurm_cluster: Cluster) -> Iterator[Cluster]:
    """The cluster, to this test alone while it runs.

    The node is machine-wide and some tests restart it, so no two of its tests may overlap,
    whichever pytest-xdist worker runs them. ``--dist loadgroup`` should already keep them on
    one worker, but pytest 9.2 made that grouping a silent no-op (pytest-xdist#1386); this lock
    holds either way, and the conftest above says when the grouping did not take.
    """
    with FileLock(str(Path(tempfile.gettempdir()) / "soup-exp-slurm-tests.lock")):
        yield slurm_cluster


@pytest.fixture
def without_accounting(slurm: Cluster) -> Iterator[None]:
    """The same cluster with slurmdbd gone: sacct answers 'accounting storage is disabled'."""
    if not slurm.ours:
        pytest.skip("the running SLURM was not started by scripts/local_slurm.sh; not restarting it")
    local_slurm("start", "--no-accounting")
    try:
        yield
    finally:
        local_slurm("start")


@pytest.fixture
def tiny_job_root(tmp_path: Path) -> Path:
    write_tiny_imagenet(tmp_path / "data")
    return tmp_path


