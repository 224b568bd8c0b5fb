"""Writing ingredients and guarding their directories.

An ingredient directory is final once ``ingredient.json`` exists: weights are written
first and the JSON last, both atomically. While a run is in progress the directory holds
``run.json`` (who owns it: the run's identity and fingerprint) and ``checkpoints/``.
"""

from __future__ import annotations

import datetime
import logging
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from soup_exp.artifacts import INGREDIENT_FILE, RUN_FILE, read_record, write_run
from soup_exp.errors import OutputConflictError
from soup_exp.training.checkpoint import CHECKPOINT_DIR
from soup_exp.utils.hashing import stable_hash
from soup_exp.utils.io import atomic_write_json

log = logging.getLogger(__name__)


def fingerprint(identity: Mapping[str, Any]) -> str:
    return stable_hash(identity)


def _leaves(record: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"hparams.lr": 1e-3, ...}``: nested records flattened, so a difference names a key."""
    flat: dict[str, Any] = {}
    for key, value in record.items():
        if isinstance(value, Mapping):
            flat.update(_leaves(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _difference(theirs: Mapping[str, Any], ours: Mapping[str, Any]) -> str:
    """Only the keys whose values differ, not both records (a sweep's identity is long)."""
    theirs, ours = _leaves(theirs), _leaves(ours)
    keys = sorted(k for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k))
    return "; ".join(f"{k}: there {theirs.get(k)!r}, this run {ours.get(k)!r}" for k in keys) or "unknown"


def existing_ingredient(out_dir: Path, identity: Mapping[str, Any],
                        written_before: Callable[[Mapping[str, Any], str], bool] | None = None) -> Path | None:
    """``out_dir`` if it already holds this run's finished ingredient, None if it holds
    nothing or an unfinished run of this configuration; raise if it belongs to another.
    ``written_before(record, file name)`` says whether a record of another fingerprint is
    this run's all the same, as an older soup-exp identified it."""
    for name in (INGREDIENT_FILE, RUN_FILE):
        path = out_dir / name
        if not path.is_file():
            continue
        recorded = read_record(path)
        theirs = recorded.get("identity", {})
        if recorded.get("fingerprint") != fingerprint(identity):
            if written_before is None or not written_before(recorded, name):
                raise OutputConflictError(
                    f"{out_dir} holds a {'finished' if name == INGREDIENT_FILE else 'started'} run with a "
                    f"different configuration ({_difference(theirs, identity)}). Choose another "
                    "train.output_dir (or sweep.name), or delete that directory to retrain."
                )
            log.info("%s: %s was written by an older soup-exp, which named train.init_from by its path; "
                     "it is this run's (kept as it is)", out_dir, name)
        if name == INGREDIENT_FILE:
            return out_dir
    return None


def claim(out_dir: Path, identity: Mapping[str, Any]) -> None:
    """Mark ``out_dir`` as this run's (rank 0, before training starts)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / RUN_FILE, {"identity": dict(identity), "fingerprint": fingerprint(identity)})


def write_ingredient(out_dir: Path, model: torch.nn.Module | Mapping[str, torch.Tensor], info: Mapping[str, Any],
                     identity: Mapping[str, Any], keep_checkpoints: bool = False) -> Path:
    """Weights (a classifier or its state dict) first, then ``ingredient.json`` (which makes
    the run final), then clean up."""
    weights = model.state_dict() if isinstance(model, torch.nn.Module) else model
    record = {**info, "identity": dict(identity), "fingerprint": fingerprint(identity),
              "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}
    write_run(out_dir, weights, record)
    (out_dir / RUN_FILE).unlink(missing_ok=True)
    if not keep_checkpoints:
        shutil.rmtree(out_dir / CHECKPOINT_DIR, ignore_errors=True)
    log.info("wrote ingredient %s (%s, held-out accuracy %s)", out_dir, info.get("kind"),
             percent_text(info.get("held_out_accuracy")))
    return out_dir


def percent_text(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}%"
