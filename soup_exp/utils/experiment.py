"""What every stage does around its work: claim the output directory, turn user
errors into one clear message, and log where things went."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from soup_exp.errors import OutputConflictError, SoupExpError
from soup_exp.utils.config import to_plain
from soup_exp.utils.io import atomic_write_json, read_json

log = logging.getLogger(__name__)

MARKER = "experiment.json"


def experiment_identity(cfg: DictConfig) -> dict[str, Any]:
    """What makes two runs 'the same experiment': its name, data classes and model."""
    model = cfg.get("model") or {}
    data = cfg.get("data") or {}
    return {
        "name": cfg.name,
        "model": {k: model.get(k) for k in ("source", "name")},
        "classes": to_plain(data.get("classes")),
    }


def claim_output_dir(cfg: DictConfig) -> Path:
    """Create ``cfg.out_dir`` or check that it already belongs to this experiment.

    Two experiments writing into one directory would mix their ingredients into each
    other's soups, so a mismatch stops the run before anything is written.
    """
    out_dir = Path(cfg.out_dir)
    identity = experiment_identity(cfg)
    marker = out_dir / MARKER
    if marker.exists():
        existing = read_json(marker)
        if existing != identity:
            raise OutputConflictError(
                f"output directory {out_dir} holds a different experiment:\n"
                f"  there: {existing}\n  this run: {identity}\n"
                "Choose another experiment name (name=...) or output root "
                "(paths.output_dir=... or SOUP_OUTPUT_DIR), or delete that directory."
            )
        return out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(marker, identity)
    return out_dir


def run_stage(cfg: DictConfig, stage: Callable[[DictConfig], Any], claim: bool = True) -> Any:
    """Run one stage; user errors become a single message and exit status 2.

    ``claim=False`` for stages that only read an experiment's results (report).
    """
    if cfg.get("cpu_threads"):
        torch.set_num_threads(int(cfg.cpu_threads))
    try:
        if claim:
            claim_output_dir(cfg)
        return stage(cfg)
    except SoupExpError as err:
        log.debug("stage failed", exc_info=True)
        print(f"soup-exp {cfg.get('stage', '')}: error: {err}", file=sys.stderr)
        sys.exit(2)

