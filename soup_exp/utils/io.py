"""Atomic file writes and safe reads.

Every artefact soup-exp produces (weights, ingredient/soup metadata, results, splits,
caches) is written to a temporary file in the destination directory and renamed into
place, so a crash or preemption never leaves a half-written file under the final name.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=json_default) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def atomic_save_safetensors(
    tensors: Mapping[str, torch.Tensor],
    path: str | os.PathLike,
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Save a flat tensor dict as safetensors, atomically; tensors are made contiguous."""
    from safetensors.torch import save_file

    flat = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(flat, str(tmp), metadata=dict(metadata) if metadata else None)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` through a temp file; for training checkpoints we wrote ourselves."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def safe_torch_load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """Load a torch file without unpickling arbitrary objects."""
    return torch.load(path, map_location=map_location, weights_only=True)


def json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, set | tuple):
        return list(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


@contextlib.contextmanager
def file_lock(path: str | os.PathLike, waiting: str | None = None) -> Iterator[None]:
    """Exclusive advisory lock (POSIX ``flock``) on ``path`` for the ``with`` block.

    Serialises work that concurrent sweep jobs would otherwise do twice (data
    generation, pretraining, cache builds) or interleave (results rows). ``waiting`` is
    logged when another process holds the lock. Where the filesystem refuses locks the
    block runs unlocked: every writer behind these locks also publishes atomically.
    """
    import fcntl
    import logging

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if waiting:
                logging.getLogger(__name__).info("%s", waiting)
            fcntl.flock(handle, fcntl.LOCK_EX)
        except OSError as err:
            logging.getLogger(__name__).warning("cannot lock %s (%s); continuing unlocked", path, err)
        yield
