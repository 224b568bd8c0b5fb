"""A rerun that would log exactly what the last W&B run logged starts no new run.

Stages that skip finished work log only what they did, so with nothing to do they log
nothing and (runs start at the first thing logged) write no run. The report redraws its
table and figures every time instead: it keeps the fingerprint of what its run logged
beside its outputs, and logs again only when that changed or that run is gone.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from soup_exp.tracking.wandb_run import logger_directory, start_run
from soup_exp.utils.config import config_get
from soup_exp.utils.hashing import file_sha256, stable_hash
from soup_exp.utils.io import atomic_write_json, read_json

LOGGED_FILE = ".wandb_logged.json"
LOGGER_KEYS = ("mode", "project", "entity", "group")

log = logging.getLogger(__name__)

Columns = Sequence[str]
Rows = Sequence[Sequence[Any]]


def log_once(
    cfg: Any,
    folder: Path,
    *,
    stage: str,
    name: str,
    tables: Mapping[str, tuple[Columns, Rows]],
    summary: Mapping[str, Any],
    images: Mapping[str, Path] | None = None,
    directory: Path | None = None,
) -> Path | None:
    """Log ``tables`` (key -> columns, rows), ``images`` (key -> png) and ``summary`` to a new
    W&B run of ``stage``, unless the last run logged from ``folder`` logged exactly these
    to the same place and still exists. ``directory``: where the run goes instead of
    ``logger.dir``. Returns the run's directory (the earlier one when nothing was logged)."""
    images = dict(images or {})
    where = {key: str(config_get(cfg, f"logger.{key}")) for key in LOGGER_KEYS}
    where["dir"] = str(directory or logger_directory(cfg))
    fingerprint = content_fingerprint({"logger": where, "tables": tables, "images": list(images), "summary": summary},
                                      images.values())
    logged = previous_run(folder, fingerprint)
    if logged is not None:
        log.info("W&B: %s logged this %s already (same tables, figures and numbers); no new run", logged, stage)
        return logged
    with start_run(cfg, stage=stage, name=name, directory=directory) as run:
        for key, (columns, rows) in tables.items():
            run.log_table(key, columns, rows)
        for key, path in images.items():
            run.log_image(key, path)
        run.summary(summary)
    remember_run(folder, fingerprint, run.dir)
    return run.dir


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
