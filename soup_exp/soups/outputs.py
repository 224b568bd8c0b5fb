"""Soup directories: ``model.safetensors`` (weight-space recipes) then ``soup.json``.

Like ingredients, the weights are written first and the JSON last, each atomically, so a
directory with ``soup.json`` is a finished soup and anything else is redone on resume.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from soup_exp.soups.ingredients import Ingredient
from soup_exp.utils.io import atomic_path, atomic_save_safetensors, atomic_write_json, read_json
from soup_exp.utils.runtime import code_version

SOUP_FILE = "soup.json"
WEIGHTS_FILE = "model.safetensors"


def is_finished(soup_dir: Path) -> bool:
    return (soup_dir / SOUP_FILE).is_file()


def read_soup(soup_dir: Path) -> dict[str, Any]:
    return read_json(soup_dir / SOUP_FILE)


def soup_record(
    name: str,
    recipe: str,
    kind: str,
    ingredients: Sequence[Ingredient],
    **fields: Any,
) -> dict[str, Any]:
    """The ``soup.json`` contract (docs/architecture.md, "Soup stage outputs")."""
    first = ingredients[0] if ingredients else None
    record: dict[str, Any] = {
        "name": name,
        "recipe": recipe,
        "kind": kind,
        "ingredients": [ing.name for ing in ingredients],
        "ingredient_paths": [str(ing.path) if ing.path else None for ing in ingredients],
        "coefficients": None,
        "held_out_accuracy": None,
        "base_model": first.base_model if first else None,
        "classes": first.info.get("classes") if first else None,
        "num_ingredients": len(ingredients),
    }
    record.update(fields)
    record["code_version"] = code_version()
    record["created"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    return record


def write_soup(
    soup_dir: Path,
    record: Mapping[str, Any],
    state_dict: Mapping[str, torch.Tensor] | None = None,
    weights_from: Path | None = None,
) -> Path:
    """Write weights (a state dict, or a hard link/copy of ``weights_from``) then ``soup.json``."""
    soup_dir.mkdir(parents=True, exist_ok=True)
    if state_dict is not None:
        atomic_save_safetensors(state_dict, soup_dir / WEIGHTS_FILE,
                                metadata={"recipe": str(record.get("recipe")), "name": str(record.get("name"))})
    elif weights_from is not None:
        _link_or_copy(weights_from, soup_dir / WEIGHTS_FILE)
    atomic_write_json(soup_dir / SOUP_FILE, dict(record))
    return soup_dir


def _link_or_copy(source: Path, target: Path) -> None:
    """A hard link costs no disk; across file systems fall back to a copy. Both atomic."""
    with atomic_path(target) as tmp:
        tmp.unlink()
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)
