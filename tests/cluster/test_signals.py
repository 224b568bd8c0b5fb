"""Loader workers leave SLURM's signals to the main process."""

from __future__ import annotations

import os
import signal
import time

import pytest
from torch.utils.data import DataLoader, Dataset

from soup_exp.cluster.signals import quiet_loader_worker


class _WorkerPids(Dataset):
    def __len__(self) -> int:
        return 64

    def __getitem__(self, index: int) -> int:
        time.sleep(0.01)
        return os.getpid()


def _signal_worker_then_finish(worker_init_fn) -> int:
    loader = DataLoader(_WorkerPids(), batch_size=4, num_workers=1, worker_init_fn=worker_init_fn)
    batches = iter(loader)
    worker = int(next(batches)[0])
    for signum in (signal.SIGTERM, signal.SIGUSR2):
        os.kill(worker, signum)
    time.sleep(0.3)
    return 1 + sum(1 for _ in batches)


def test_a_quiet_worker_survives_the_signals_slurm_sends_to_the_whole_step() -> None:
    assert _signal_worker_then_finish(quiet_loader_worker) == 16


def test_without_it_the_same_signals_kill_the_loader() -> None:
    with pytest.raises(RuntimeError, match="DataLoader worker"):
        _signal_worker_then_finish(None)
