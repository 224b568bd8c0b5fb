"""Device, precision and code-version helpers shared by every stage."""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
from pathlib import Path

import torch

import soup_exp
from soup_exp.errors import ConfigError
from soup_exp.utils.text import plural


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def require_device(device: str) -> None:
    """Refuse a CUDA ``device`` this process cannot use, before the stage starts (torch
    would otherwise fail at the first model moved there, minutes into a pipeline)."""
    wanted = resolve_device(device)
    if wanted.type != "cuda":
        return
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise ConfigError(f"device={device}: torch sees no CUDA device on this machine (torch {torch.__version__}, "
                          f"CUDA build {torch.version.cuda}); use device=cpu, or device=auto to take a GPU when there is one")
    if wanted.index is not None and wanted.index >= count:
        raise ConfigError(f"device={device}: this machine has {plural(count, 'CUDA device')} (cuda:0 to cuda:{count - 1})")


def available_cores() -> int:
    """The CPU cores this process may run on (a SLURM or taskset allocation, not the machine's)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@contextlib.contextmanager
def threads_beside_loader(device: torch.device, num_workers: int):
    """On CPU, leave the loader workers their cores: torch's threads and the workers would
    otherwise oversubscribe the machine (a tiny model then trains at half speed)."""
    cores = available_cores()
    before = torch.get_num_threads()
    wanted = max(1, cores - num_workers) if device.type == "cpu" and num_workers > 0 else before
    torch.set_num_threads(min(before, wanted))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def effective_precision(device: torch.device, precision: str) -> str:
    """The numerics ``precision`` really gives on ``device``: ``bf16`` on CUDA, else ``fp32``."""
    return "bf16" if device.type == "cuda" and precision == "bf16" else "fp32"


def autocast(device: torch.device, precision: str = "bf16"):
    """bf16 autocast on CUDA when asked; a no-op context elsewhere (CPU runs stay fp32)."""
    if effective_precision(device, precision) == "bf16":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def code_version() -> str:
    """Package version, plus the git commit when soup-exp runs from its own checkout (an
    installed copy never asks git: its parent folder may be anybody's repository).

    Only informative, so it never fails a stage: a checkout whose git metadata this user
    cannot read (a colleague's clone, a private site directory) is ``<version>+unknown``,
    said once in the log.
    """
    root = Path(soup_exp.__file__).resolve().parent.parent
    try:
        if not ((root / "conf" / "__init__.py").is_file() and (root / ".git").exists()):
            return soup_exp.__version__
        sha = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError) as err:
        _say_unknown_commit(root, err)
        return f"{soup_exp.__version__}+unknown"
    return f"{soup_exp.__version__}+g{sha}{'.dirty' if dirty else ''}"


_UNKNOWN_COMMIT_SAID: set[Path] = set()


def _say_unknown_commit(root: Path, err: Exception) -> None:
    if root in _UNKNOWN_COMMIT_SAID:
        return
    _UNKNOWN_COMMIT_SAID.add(root)
    detail = err.stderr.strip().splitlines()[0] if getattr(err, "stderr", None) else str(err)
    logging.getLogger(__name__).warning(
        "code version recorded as unknown: cannot read the git commit of %s (%s)", root, detail)
