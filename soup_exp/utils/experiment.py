"""What every stage does around its work: claim the output directory, turn user
errors into one clear message, and log where things went."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

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


def check_output_dir(cfg: DictConfig) -> bool:
    """Whether ``cfg.out_dir`` is already this experiment's; raise if it is another's.

    Two experiments writing into one directory would mix their ingredients into each
    other's soups, so a mismatch stops the run before anything is written.
    """
    marker = Path(cfg.out_dir) / MARKER
    if not marker.exists():
        return False
    existing, identity = read_json(marker), experiment_identity(cfg)
    if existing != identity:
        raise OutputConflictError(
            f"output directory {cfg.out_dir} holds a different experiment:\n"
            f"  there: {existing}\n  this run: {identity}\n"
            "Choose another experiment name (name=...) or output root "
            "(paths.output_dir=... or SOUP_OUTPUT_DIR), or delete that directory."
        )
    return True


def claim_output_dir(cfg: DictConfig) -> Path:
    """Create ``cfg.out_dir`` or check that it already belongs to this experiment."""
    out_dir = Path(cfg.out_dir)
    if not check_output_dir(cfg):
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out_dir / MARKER, experiment_identity(cfg))
    return out_dir


def exit_with_error(stage: str, err: SoupExpError) -> NoReturn:
    """The one-line message of a user error, exit status 2."""
    log.debug("stage failed", exc_info=True)
    print(f"soup-exp {stage}: error: {err}", file=sys.stderr)
    sys.exit(2)


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
        exit_with_error(str(cfg.get("stage", "")), err)
