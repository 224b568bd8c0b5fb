"""A rerun that would log exactly what the last W&B run logged starts no new run.

Stages that skip finished work log only what they did, so with nothing to do they log
nothing and (runs start at the first thing logged) write no run. The report redraws its
table and figures every time instead: it keeps the fingerprint of what its run logged
beside its outputs, and logs again only when that changed or that run is gone.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from soup_exp.utils.hashing import file_sha256, stable_hash
from soup_exp.utils.io import atomic_write_json, read_json

LOGGED_FILE = ".wandb_logged.json"


def content_fingerprint(content: Any, files: Iterable[Path]) -> str:
    """What a run logs: JSON-able values and the bytes of the files it uploads."""
    return stable_hash({"content": content, "files": {str(f): file_sha256(f) for f in sorted(files)}}, length=64)


def previous_run(folder: Path, fingerprint: str) -> Path | None:
    """The run directory that logged ``fingerprint`` from ``folder``, while it still exists."""
    try:
        record = read_json(Path(folder) / LOGGED_FILE)
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("fingerprint") != fingerprint or not record.get("run"):
        return None
    run_dir = Path(str(record["run"]))
    return run_dir if run_dir.is_dir() else None


def remember_run(folder: Path, fingerprint: str, run_dir: Path | None) -> None:
    if run_dir is not None:
        atomic_write_json(Path(folder) / LOGGED_FILE, {"fingerprint": fingerprint, "run": str(run_dir)})
