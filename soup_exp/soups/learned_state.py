"""A learned soup's progress on disk, so that an interrupted one resumes mid-way.

One safetensors file (never a pickle) holds the trained tensors (mixing logits, beta) and
the optimiser's moments; its header holds the position (the epoch under way, its batches
done, the optimiser steps done), the loss curve so far and the ``inputs`` the soup is cooked
from. It is rewritten atomically after every epoch, and at the batch where a signal stops
the soup. State saved for other inputs (another pool, recipe parameter, held-out set or
seed) is never resumed: the log says what changed and the soup starts afresh.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from soup_exp.artifacts import ArtifactError, read_weights
from soup_exp.soups.freshness import as_json, describe_change
from soup_exp.utils.io import atomic_save_safetensors

log = logging.getLogger(__name__)

FORMAT = "soup-exp learned soup state 1"
_PARAM, _OPTIMIZER = "param.", "optimizer."


@dataclass
class Progress:
    """Where a learned soup stands: ``batch`` batches of epoch ``epoch`` (0-based) are done."""

    epoch: int = 0
    batch: int = 0
    step: int = 0
    curve: list[dict[str, float]] = field(default_factory=list)


def save_state(path: Path, inputs: Mapping[str, Any], progress: Progress,
               params: Mapping[str, torch.Tensor], optimizer: torch.optim.Optimizer) -> None:
    """Write ``params``, the optimiser's state and ``progress`` to ``path`` in one atomic write."""
    tensors = {_PARAM + name: tensor.detach() for name, tensor in params.items()}
    for index, entry in optimizer.state_dict()["state"].items():
        for key, value in entry.items():
            tensors[f"{_OPTIMIZER}{index}.{key}"] = torch.as_tensor(value)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_save_safetensors(tensors, path, metadata={
        "format": FORMAT, "inputs": json.dumps(as_json(inputs), sort_keys=True),
        "progress": json.dumps(asdict(progress)),
    })


def load_state(path: Path, inputs: Mapping[str, Any], params: Mapping[str, torch.Tensor],
               optimizer: torch.optim.Optimizer) -> Progress | None:
    """Restore ``params`` and ``optimizer`` in place from ``path`` and say where they stood;
    None (nothing restored) without a state, or with one saved for other ``inputs``. A
    damaged file is an error naming it (deleting it restarts the soup)."""
    if not path.is_file():
        return None
    metadata, tensors = _read(path)
    recorded, current = metadata["inputs"], as_json(inputs)
    if recorded != current:
        log.warning("%s was saved for other inputs (%s): starting the learned soup afresh", path,
                    describe_change(recorded, current))
        return None
    progress = metadata["progress"]
    with torch.no_grad():
        for name, tensor in params.items():
            saved = tensors.get(_PARAM + name)
            if saved is None or saved.shape != tensor.shape:
                raise _damaged(path, f"no {name} of shape {tuple(tensor.shape)}")
            tensor.copy_(saved)
    moments: dict[int, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        if key.startswith(_OPTIMIZER):
            index, _, name = key.removeprefix(_OPTIMIZER).partition(".")
            moments.setdefault(int(index), {})[name] = tensor
    optimizer_state = optimizer.state_dict()
    try:
        optimizer.load_state_dict({**optimizer_state, "state": moments})
    except (KeyError, ValueError, RuntimeError) as err:
        raise _damaged(path, f"its optimiser state does not fit ({err})") from err
    return progress


def _read(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    from safetensors import safe_open

    tensors = read_weights(path)  # a truncated file is an ArtifactError naming it
    with safe_open(str(path), framework="pt") as f:
        header = f.metadata() or {}
    if header.get("format") != FORMAT:
        raise _damaged(path, f"its header names no {FORMAT!r}")
    try:
        inputs = json.loads(header["inputs"])
        raw = json.loads(header["progress"])
        progress = Progress(**raw)
    except (KeyError, TypeError, ValueError) as err:
        raise _damaged(path, f"its header does not read ({err})") from err
    counts = (progress.epoch, progress.batch, progress.step)
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in counts) \
            or not isinstance(progress.curve, list) or not any(k.startswith(_PARAM) for k in tensors):
        raise _damaged(path, "its position or tensors are missing")
    return {"inputs": inputs, "progress": progress}, tensors


def _damaged(path: Path, why: str) -> ArtifactError:
    return ArtifactError(f"{path}: not a learned soup state ({why}); delete it to restart the learned soup")
