"""Loader workers leave SLURM's signals to the main process, and the docs name the right signal."""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset, get_worker_info

from soup_exp.cluster.signals import quiet_loader_worker
from soup_exp.data.base import LabeledImages
from soup_exp.evaluation import sources
from soup_exp.evaluation.sources import DecodingSource
from soup_exp.training import lp
from soup_exp.training.lp import extract_features

REPO = Path(__file__).resolve().parents[2]


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


class _SignalsItsOwnWorker:
    """A transform that, in a loader worker, sends that worker the signals SLURM sends a job
    step (a requeue's SIGTERM, a time limit's SIGUSR2); in the main process it only converts."""

    def __call__(self, image: Image.Image) -> torch.Tensor:
        if get_worker_info() is not None:
            for signum in (signal.SIGTERM, signal.SIGUSR2):
                os.kill(os.getpid(), signum)
        return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)


def _images(folder: Path, count: int = 6) -> list[tuple[str, int]]:
    folder.mkdir(parents=True, exist_ok=True)
    samples = []
    for i in range(count):
        path = folder / f"{i}.png"
        Image.fromarray(np.full((8, 8, 3), 40 * i, dtype=np.uint8)).save(path)
        samples.append((str(path), i % 2))
    return samples


def _lp_features(samples: list[tuple[str, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    encoder = nn.Flatten()
    return extract_features(encoder, samples, _SignalsItsOwnWorker(), batch_size=2, device="cpu",
                            num_workers=1, progress=False)


def _evaluation_batches(samples: list[tuple[str, int]]) -> list[torch.Tensor]:
    dataset = LabeledImages(name="Tiny", samples=samples, num_targets=2)
    source = DecodingSource(dataset, _SignalsItsOwnWorker(), num_workers=1)
    return [indices for _, indices in source.iter_batches(batch_size=2)]


def test_lp_feature_workers_survive_the_signals_of_a_requeue(tmp_path: Path) -> None:
    features, labels = _lp_features(_images(tmp_path))
    assert features.shape == (6, 3 * 8 * 8) and labels.tolist() == [0, 1, 0, 1, 0, 1]


def test_evaluation_workers_survive_the_signals_of_a_requeue(tmp_path: Path) -> None:
    assert torch.cat(_evaluation_batches(_images(tmp_path))).tolist() == list(range(6))


@pytest.mark.parametrize("module", [lp, sources])
def test_loader_workers_built_without_quiet_loader_worker_die_of_them(tmp_path: Path, monkeypatch, module) -> None:
    """The two tests above fail when a loader is built without ``quiet_loader_worker``."""
    monkeypatch.setattr(module, "quiet_loader_worker", None)
    read = _lp_features if module is lp else _evaluation_batches
    with pytest.raises(RuntimeError, match="DataLoader worker"):
        read(_images(tmp_path))


DOCUMENTED = [REPO / "docs" / "cluster.md", REPO / "conf" / "launcher" / "slurm.yaml"]


@pytest.mark.parametrize("path", DOCUMENTED, ids=lambda p: p.name)
def test_the_docs_name_sigusr2_as_the_time_limit_signal_and_sigusr1_only_as_unused(path: Path) -> None:
    """submitit asks SLURM for ``--signal=USR2@<delay>``; a SIGUSR1 kills the job (exit 138)."""
    text = " ".join(path.read_text().replace("#", " ").split())
    assert re.search(r"SIGUSR2 signal_delay_s before the time limit|time limit near .{0,60}`SIGUSR2`", text), \
        f"{path.name} does not name SIGUSR2 as what SLURM sends before the time limit"
    for sentence in re.split(r"(?<=[.!?])\s+", text):
        if re.search(r"USR1", sentence):
            assert "not used" in sentence, f"{path.name} names SIGUSR1 other than as not used: {sentence!r}"


def test_submitit_asks_slurm_for_the_documented_signal(tmp_path: Path) -> None:
    from submitit.slurm.slurm import _make_sbatch_string

    script = _make_sbatch_string(command="true", folder=tmp_path, signal_delay_s=120)
    assert "#SBATCH --signal=USR2@120" in script
