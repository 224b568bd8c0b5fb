"""Resumable training checkpoints: model, optimiser, schedule, scaler, RNG states, position.

Written atomically with ``torch.save`` and read back with ``weights_only=True``, so every
value is a tensor or a plain Python container; RNG states are converted to tensors.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from soup_exp.errors import SoupExpError
from soup_exp.utils.io import atomic_torch_save, safe_torch_load

CHECKPOINT_DIR = "checkpoints"
CHECKPOINT_FILE = "last.pt"


def checkpoint_path(output_dir: str | Path) -> Path:
    return Path(output_dir) / CHECKPOINT_DIR / CHECKPOINT_FILE


def capture_rng() -> dict[str, Any]:
    """This process's python, numpy, torch and CUDA RNG states as tensors."""
    version, py_state, gauss = random.getstate()
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "python_version": version,
        "python_state": torch.tensor(py_state, dtype=torch.int64),
        "python_gauss": gauss,
        "numpy_kind": np_kind,
        "numpy_keys": torch.from_numpy(np_keys.astype(np.int64)),
        "numpy_pos": int(np_pos),
        "numpy_has_gauss": int(np_has_gauss),
        "numpy_gauss": float(np_gauss),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate((state["python_version"], tuple(state["python_state"].tolist()), state["python_gauss"]))
    np.random.set_state((state["numpy_kind"], state["numpy_keys"].numpy().astype(np.uint32),
                         state["numpy_pos"], state["numpy_has_gauss"], state["numpy_gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class TrainState:
    """Where training stands: optimiser steps done, and the data position they imply."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0


def save_checkpoint(path: str | Path, *, model: torch.nn.Module, optimizer, scheduler, scaler,
                    state: TrainState, rng: list[dict[str, Any]], fingerprint: str) -> None:
    atomic_torch_save(
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "step": state.step,
            "epoch": state.epoch,
            "batch_in_epoch": state.batch_in_epoch,
            "rng": rng,
            "fingerprint": fingerprint,
        },
        path,
    )


def load_checkpoint(path: str | Path, fingerprint: str, older: Sequence[str] = ()) -> dict[str, Any]:
    """Read a checkpoint written by this run's configuration (else a clear error); ``older``
    are the fingerprints an older soup-exp gave the same run."""
    try:
        ckpt = safe_torch_load(path)
    except Exception as err:  # a torn or foreign file: say which and what to do
        raise SoupExpError(
            f"cannot read training checkpoint {path} ({err}); delete it to start this run afresh"
        ) from err
    if ckpt.get("fingerprint") not in (fingerprint, *older):
        raise SoupExpError(
            f"checkpoint {path} belongs to a run with a different configuration; "
            "use another train.output_dir or delete that directory"
        )
    return ckpt
