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

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def _isolated_paths(tmp_path_factory, monkeypatch):
    """Point every configured path at a per-session temp root unless a test overrides it."""
    root = tmp_path_factory.getbasetemp() / "soup_root"
    monkeypatch.setenv("SOUP_ROOT", str(root))
    monkeypatch.setenv("SOUP_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "soup_cache"))
    monkeypatch.delenv("SOUP_DATA_DIR", raising=False)
    monkeypatch.delenv("SOUP_OUTPUT_DIR", raising=False)
    yield
