"""Shared test setup: no test touches the user's caches, W&B account or network."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest
import torch

# A shell without job control starts background jobs with SIGINT ignored, and an ignored
# signal stays ignored across exec: the Ctrl-C tests' children would never see theirs.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.pop("WANDB_API_KEY", None)

sys.path.insert(0, str(Path(__file__).parent))  # test helpers such as child_process

# Under pytest-xdist each worker gets its share of the cores, and so do the stages its
# tests start (they inherit OMP_NUM_THREADS): two workers with two threads each on two
# cores spend their time waiting on each other.
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
THREADS = max(1, min(2, (os.cpu_count() or 1) // WORKERS))
if WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))
torch.set_num_threads(THREADS)
CLUSTER_GROUP = "slurm"  # the xdist group of the tests that share the one SLURM


@pytest.hookimpl(tryfirst=True)  # before xdist turns the group marks into node ids
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under xdist: the tests of the one SLURM share a worker (some restart the cluster),
    and the slow tests start first, so that the last minutes are not one long test alone."""
    if WORKERS <= 1:
        return
    for item in items:
        if "slurm" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group(CLUSTER_GROUP))
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Say so when xdist's grouping did not take: the cluster tests then wait on each other's
    lock (tests/cluster/conftest.py) instead of running in a row on one worker."""
    if os.environ.get("PYTEST_XDIST_WORKER") != "gw0" or not session.config.getoption("loadgroup", False):
        return
    grouped = [item.nodeid.endswith(f"@{CLUSTER_GROUP}") for item in session.items if item.get_closest_marker("xdist_group")]
    if grouped and not all(grouped):
        session.config.issue_config_time_warning(pytest.PytestWarning(
            f"--dist loadgroup did not group the SLURM tests with pytest {pytest.__version__} "
            "(pytest-xdist#1386); they run one at a time on a lock instead, and a worker may wait for one"), 2)


@pytest.fixture(autouse=True)
def _isolated_paths(tmp_path_factory, monkeypatch):
    """Point every configured path at a per-session temp root unless a test overrides it."""
    root = tmp_path_factory.getbasetemp() / "soup_root"
    monkeypatch.setenv("SOUP_ROOT", str(root))
    monkeypatch.setenv("SOUP_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "soup_cache"))
    monkeypatch.delenv("SOUP_DATA_DIR", raising=False)
    monkeypatch.delenv("SOUP_OUTPUT_DIR", raising=False)
    yield
