"""The on-disk contracts every stage shares: run directories, soup directories, weights.

- A **run directory** (an ingredient, or the zero-shot model) holds ``model.safetensors``
  and ``ingredient.json``; while training it holds ``run.json`` instead of the latter.
- A **soup directory** holds ``soup.json`` and, for weight-space recipes,
  ``model.safetensors``; output-space recipes (ensembles) list their ``members``.

Weights are always written before the JSON that makes a directory final, each through a
temporary file and a rename, so a directory with its JSON is complete and anything else
is unfinished work that the next run redoes. Names of runs and soups are path components.
"""

from __future__ import annotations

import glob
import logging
import os
import re
import shutil
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from soup_exp.errors import SoupExpError
from soup_exp.utils.checks import is_fraction
from soup_exp.utils.io import (
    atomic_path,
    atomic_save_safetensors,
    atomic_write_json,
    read_json,
    why_unreadable,
)

log = logging.getLogger(__name__)

WEIGHTS_FILE = "model.safetensors"
INGREDIENT_FILE = "ingredient.json"
SOUP_FILE = "soup.json"
RUN_FILE = "run.json"
LEGACY_KINDS = {"individual": "finetune"}  # written before a run's kind was its train.mode


class ArtifactError(SoupExpError, ValueError):
    """A run or soup directory that does not follow its contract; the message names the file."""


# ---- names --------------------------------------------------------------------------------


def check_name(name: Any, what: str) -> str:
    """``name`` if it can be a single path component (no separators, not ``.``/``..``)."""
    text = str(name) if name is not None else ""
    if not text or text in {".", ".."} or "/" in text or "\\" in text or "\0" in text:
        raise ArtifactError(f"{what} {text!r} is not a valid name: names become folder names, "
                            "so they cannot be empty, '.', '..' or contain '/' or '\\'")
    return text


# ---- reading ---------------------------------------------------------------------------------


def read_record(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``; anything else is an :class:`ArtifactError` naming the file."""
    try:
        record = read_json(path)
    except ValueError as err:
        raise ArtifactError(f"{path} is not valid JSON ({err}); delete or repair it") from err
    except OSError as err:
        raise ArtifactError(f"cannot read {path}: {err.strerror or err}") from err
    if not isinstance(record, dict):
        raise ArtifactError(f"{path} must hold a JSON object, found {type(record).__name__}")
    return record


def ingredient_record(run_dir: Path) -> dict[str, Any]:
    """``ingredient.json`` of a finished run, with its fields checked."""
    path = Path(run_dir) / INGREDIENT_FILE
    record = read_record(path)
    record["name"] = check_name(record.get("name") or Path(run_dir).name, f"{path}: name")
    check_ingredient_fields(record, path)
    record["kind"] = LEGACY_KINDS.get(record.get("kind"), record.get("kind"))
    return record


def check_ingredient_fields(record: Mapping[str, Any], path: Path) -> None:
    """The one check of ``ingredient.json``'s values, before any stage uses them: ``kind`` a
    string, ``metrics`` (and its ``published``) an object, ``held_out_accuracy`` a fraction
    in [0, 1] (it steers the greedy soup, so NaN or a percentage must not slip through)."""
    kind = record.get("kind")
    if kind is not None and not isinstance(kind, str):
        raise ArtifactError(f"{path}: kind must be a string (finetune, lp, zeroshot, ...), got {kind!r}")
    metrics = record.get("metrics")
    if metrics is not None and not isinstance(metrics, Mapping):
        raise ArtifactError(f"{path}: metrics must be an object of name -> value, got {metrics!r}")
    published = (metrics or {}).get("published")
    if published is not None and not isinstance(published, Mapping):
        raise ArtifactError(f"{path}: metrics.published must be an object of dataset -> accuracy, got {published!r}")
    held_out = record.get("held_out_accuracy")
    if held_out is not None and not is_fraction(held_out):
        raise ArtifactError(f"{path}: held_out_accuracy={held_out!r} is not an accuracy "
                            "(accuracies are fractions in [0, 1]); repair it or delete the file to retrain")


def soup_record(soup_dir: Path) -> dict[str, Any]:
    """``soup.json`` of a finished soup, with its fields checked."""
    path = Path(soup_dir) / SOUP_FILE
    record = read_record(path)
    record["name"] = check_name(record.get("name") or Path(soup_dir).name, f"{path}: name")
    metrics = record.get("metrics")
    if metrics is not None and not isinstance(metrics, Mapping):
        raise ArtifactError(f"{path}: metrics must be an object of name -> value, got {metrics!r}")
    members = record.get("members")
    if members is not None and not (isinstance(members, list) and members):
        raise ArtifactError(f"{path}: 'members' must be a non-empty list of ingredient names or paths")
    cost = record.get("cost")
    if cost is not None and not (isinstance(cost, Mapping) and all(
            value is None or (isinstance(value, int | float) and not isinstance(value, bool)) for value in cost.values())):
        raise ArtifactError(f"{path}: cost must be an object of name -> number (or null), got {cost!r}")
    return record


def portable_path(path: str | os.PathLike, folder: Path, experiment: Path) -> str:
    """``path`` as a record in ``folder`` names it: relative to ``folder`` when it lies inside
    ``experiment``, so a moved or copied experiment reads its own files; absolute otherwise.
    Read it back with ``folder / recorded`` (an absolute one stays as it is)."""
    path, folder = Path(os.path.abspath(path)), Path(os.path.abspath(folder))
    if not path.is_relative_to(os.path.abspath(experiment)):
        return str(path)
    return os.path.relpath(path, folder)


def recorded_ingredient_paths(record: Mapping[str, Any], soup_dir: Path) -> dict[str, Path]:
    """A ``soup.json``'s ingredients by name -> the files it recorded, read from ``soup_dir``."""
    pairs = zip(record.get("ingredients") or [], record.get("ingredient_paths") or [], strict=False)
    return {str(name): Path(soup_dir) / str(path) for name, path in pairs if path}


def is_finished_run(path: Path) -> bool:
    return (Path(path) / INGREDIENT_FILE).is_file()


def is_finished_soup(path: Path) -> bool:
    return (Path(path) / SOUP_FILE).is_file()


def run_weights(run_dir: Path, record_file: str = INGREDIENT_FILE) -> Path:
    """The weights of a finished run or soup directory; their absence is a damaged directory."""
    weights = Path(run_dir) / WEIGHTS_FILE
    if not weights.is_file():
        raise ArtifactError(f"{Path(run_dir) / record_file} exists but {weights} does not: "
                            "the directory is damaged; delete it and rerun that job")
    return weights


def natural_key(path: str | os.PathLike) -> tuple:
    """Sort key that orders numbers by value (``model_2`` before ``model_10``): the order of
    the authors' results rows, which fixes their uniform-soup sum and greedy tie order."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part)
                 for part in re.split(r"(\d+)", str(path)) if part)


def find_dirs(root: Path, marker: str, *, recursive: bool = True) -> list[Path]:
    """Directories under ``root`` (following symlinks, each real directory once) that hold
    ``marker``, in natural path order. Unfinished runs (weights or run.json but no marker)
    are logged and skipped."""
    root = Path(root)
    if not root.is_dir():
        return []
    found: list[Path] = []
    for directory in _walk(root, recursive):
        if (directory / marker).is_file():
            found.append(directory)
        elif marker == INGREDIENT_FILE and ((directory / WEIGHTS_FILE).exists() or (directory / RUN_FILE).exists()):
            log.info("skipping %s: no %s yet (an unfinished run)", directory, marker)
    return sorted(found, key=natural_key)


def pool_paths(pool: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    """The paths a pool spec names (``soup.pool``: a path, a glob, or a list of them), each
    glob expanded in natural order; paths are not checked to exist."""
    specs = [pool] if isinstance(pool, str | os.PathLike) else list(pool)
    paths: list[Path] = []
    for spec in map(str, specs):
        if glob.has_magic(spec):
            paths.extend(Path(m) for m in sorted(glob.glob(os.path.expanduser(spec)), key=natural_key))
        else:
            paths.append(Path(spec).expanduser())
    return paths


def runs_at(path: Path) -> list[Path]:
    """The finished run directories at ``path``: the run itself, or every run below it."""
    return [path] if (path / INGREDIENT_FILE).is_file() else find_dirs(path, INGREDIENT_FILE)


def _walk(root: Path, recursive: bool) -> Iterator[Path]:
    """Sub-directories of ``root`` (hidden ones skipped), symlinks followed, loops cut. A
    link to ``root`` or a folder above it (``ingredients/loop -> ..``) is not followed:
    it would find the experiment's other models (the zero-shot model, soups) as ingredients."""
    seen: set[tuple[int, int]] = set()
    top = root.resolve()
    stack = [root]
    while stack:
        directory = stack.pop()
        try:
            stat = directory.stat()
        except OSError as err:  # a dangling link or a symlink loop
            log.warning("skipping %s: %s", directory, err.strerror or err)
            continue
        if (stat.st_dev, stat.st_ino) in seen:
            continue
        seen.add((stat.st_dev, stat.st_ino))
        if directory != root:
            yield directory
        if directory == root or recursive:
            try:
                children = sorted(p for p in directory.iterdir() if not p.name.startswith("."))
            except OSError as err:
                log.warning("skipping %s: %s", directory, err.strerror or err)
                continue
            stack.extend(reversed([c for c in children if _is_dir(c) and not _links_above(c, top)]))


def _links_above(path: Path, top: Path) -> bool:
    """Whether ``path`` is a symlink to ``top`` or a folder that holds it (said once per walk)."""
    if not path.is_symlink():
        return False
    target = path.resolve()
    if not top.is_relative_to(target):
        return False
    log.warning("skipping %s: it links to %s, which holds %s (followed, it would find every model "
                "there again); link the run directories themselves instead", path, target, top)
    return True


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except OSError:
        return False


# ---- weights ---------------------------------------------------------------------------------


class CheckpointMismatchError(ArtifactError, RuntimeError):
    """A weights file does not fit the classifier described by the model config."""


def weights_file(dir_or_file: str | os.PathLike) -> Path:
    """``<dir>/model.safetensors`` for a run or soup directory, else the file itself."""
    path = Path(dir_or_file)
    path = path / WEIGHTS_FILE if path.is_dir() else path
    if not path.is_file():
        raise ArtifactError(f"no weights at {path} (expected a run directory holding {WEIGHTS_FILE}, "
                            "or a .safetensors file)")
    if path.suffix != ".safetensors":
        raise ArtifactError(f"{path} is not a .safetensors file; soup-exp reads weights only as "
                            "safetensors (never pickles)")
    return path


def read_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file; a truncated or foreign file is an ArtifactError."""
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as err:  # safetensors raises its own error types for bad headers/data
        reason = why_unreadable(path)
        if reason is not None:
            raise ArtifactError(f"{path}: cannot be read ({reason})") from err
        raise ArtifactError(f"{path}: not a readable safetensors file ({err}); was it cut short "
                            "by a crash or a full disk? Delete it and rerun the job that wrote it") from err


def load_weights(model: torch.nn.Module, dir_or_file: str | os.PathLike) -> torch.nn.Module:
    """Load a run/soup directory's (or a file's) weights into ``model``, strictly."""
    path = weights_file(dir_or_file)
    load_state_dict_strict(model, read_weights(path), str(path))
    return model


def load_state_dict_strict(model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    """``load_state_dict`` whose error names the missing and unexpected keys and shapes."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    wrong_shape = [
        f"{k}: file {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(state_dict))
        if tuple(own[k].shape) != tuple(state_dict[k].shape)
    ]
    if missing or unexpected or wrong_shape:
        def show(keys: list[str]) -> str:
            return ", ".join(keys[:8]) + (f" ... (+{len(keys) - 8} more)" if len(keys) > 8 else "") or "none"

        raise CheckpointMismatchError(
            f"{source} does not match the classifier of this model config.\n"
            f"  missing keys: {show(missing)}\n  unexpected keys: {show(unexpected)}\n"
            f"  shape mismatches: {show(wrong_shape)}\n"
            "Check that model=... and the class subset are the ones the weights were trained with."
        )
    model.load_state_dict(state_dict, strict=True)


# ---- writing ---------------------------------------------------------------------------------


def write_weights(path: Path, state_dict: Mapping[str, torch.Tensor] | None = None,
                  metadata: Mapping[str, Any] | None = None, link_from: Path | None = None) -> None:
    """Write a state dict, or reuse ``link_from``'s bytes (hard link, else copy), atomically."""
    if state_dict is not None:
        atomic_save_safetensors(state_dict, path, metadata={k: str(v) for k, v in (metadata or {}).items()})
    elif link_from is not None:
        with atomic_path(path) as tmp:
            tmp.unlink()
            try:
                os.link(link_from, tmp)
            except OSError:
                shutil.copyfile(link_from, tmp)
    else:
        raise ValueError("write_weights needs a state dict or a file to link")


def write_run(run_dir: Path, state_dict: Mapping[str, torch.Tensor], record: Mapping[str, Any]) -> Path:
    """Weights first, then ``ingredient.json`` (which makes the run final)."""
    write_weights(run_dir / WEIGHTS_FILE, state_dict,
                  metadata={"name": record["name"], "base_model": record.get("base_model")})
    atomic_write_json(run_dir / INGREDIENT_FILE, dict(record))
    return run_dir


def write_soup_dir(soup_dir: Path, record: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor] | None = None,
                   weights_from: Path | None = None) -> Path:
    """Weights (a state dict, or a link to an ingredient's file) first, then ``soup.json``."""
    soup_dir.mkdir(parents=True, exist_ok=True)
    if state_dict is not None or weights_from is not None:
        write_weights(soup_dir / WEIGHTS_FILE, state_dict,
                      metadata={"recipe": record.get("recipe"), "name": record.get("name"),
                                "base_model": record.get("base_model")},
                      link_from=weights_from)
    atomic_write_json(soup_dir / SOUP_FILE, dict(record))
    return soup_dir
