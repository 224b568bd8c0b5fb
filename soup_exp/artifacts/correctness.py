"""Per-image correctness beside ``results.jsonl``: one bit per image, model and dataset.

Two models scored on the same images are paired observations; their accuracies alone
cannot say whether a difference is more than noise, their per-image hits can (paired
bootstrap, McNemar: :mod:`soup_exp.reporting.uncertainty`). The evaluate stage writes the
hits of every model it scores into ``<results stem>.correct.safetensors``, keyed
``<model name>/<dataset>`` like the rows, bit-packed (ImageNet's 50k images: 6.3 kB), with
what they were measured on (image count, the dataset's identity, the weights'
fingerprint) so that bits which no longer match their row are never used.

The file is rewritten whole (atomically) under the results file's lock: the paper's suite
of about 150k images and 100 models is under 2 MB.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from soup_exp.errors import SoupExpError

SUFFIX = ".correct.safetensors"


class CorrectnessFileError(SoupExpError, ValueError):
    """A correctness file that safetensors cannot read, or whose entries contradict themselves."""


@dataclass(frozen=True)
class Hits:
    """One model's per-image correctness on one dataset (``bits[i]``: image ``i`` right)."""

    bits: np.ndarray
    dataset_identity: str
    weights: str

    @property
    def accuracy(self) -> float:
        return float(self.bits.mean()) if len(self.bits) else 0.0


def correctness_path(results_file: str | os.PathLike) -> Path:
    """``outputs/x/results.jsonl`` -> ``outputs/x/results.correct.safetensors``."""
    path = Path(results_file)
    return path.with_name(path.stem + SUFFIX)


def _key(name: str, dataset: str) -> str:
    return f"{name}/{dataset}"


def read_hits(path: str | os.PathLike) -> dict[str, dict[str, Hits]]:
    """``{model: {dataset: Hits}}`` of a correctness file; an absent file has none."""
    path = Path(path)
    if not path.is_file():
        return {}
    from safetensors import SafetensorError, safe_open

    found: dict[str, dict[str, Hits]] = {}
    try:
        with safe_open(str(path), framework="numpy") as f:
            metadata = f.metadata() or {}
            for key in f.keys():  # noqa: SIM118 (safe_open is not iterable)
                info = json.loads(metadata.get(key, "null") or "null")
                if not isinstance(info, dict) or not isinstance(info.get("images"), int):
                    raise CorrectnessFileError(f"{path}: entry {key!r} has no image count in its metadata")
                bits = np.unpackbits(f.get_tensor(key), count=info["images"]).astype(bool)
                name, _, dataset = key.rpartition("/")
                found.setdefault(name, {})[dataset] = Hits(bits, str(info.get("dataset")), str(info.get("weights")))
    except (SafetensorError, OSError, ValueError) as err:
        if isinstance(err, CorrectnessFileError):
            raise
        raise CorrectnessFileError(f"{path} is not a readable correctness file ({err}); delete it and rerun "
                                   "`soup-exp evaluate eval.force=true` to measure the bits again") from err
    return found


def write_hits(path: str | os.PathLike, hits: Mapping[str, Mapping[str, Hits]]) -> None:
    """Write every entry of ``hits`` (replacing the file), atomically."""
    import torch

    from soup_exp.utils.io import atomic_save_safetensors

    tensors: dict[str, Any] = {}
    metadata: dict[str, str] = {}
    for name, per_dataset in sorted(hits.items()):
        for dataset, entry in sorted(per_dataset.items()):
            key = _key(name, dataset)
            tensors[key] = torch.from_numpy(np.packbits(entry.bits.astype(bool)))
            metadata[key] = json.dumps({"images": len(entry.bits), "dataset": entry.dataset_identity,
                                        "weights": entry.weights}, sort_keys=True)
    atomic_save_safetensors(tensors, path, metadata=metadata)


def update_hits(path: str | os.PathLike, name: str, measured: Mapping[str, Hits]) -> None:
    """Replace ``name``'s entries for the datasets in ``measured``; the others stay (a row
    keeps the accuracies of datasets not evaluated again, and so do its bits). The caller
    holds the results file's lock."""
    hits = read_hits(path)
    hits.setdefault(name, {}).update(measured)
    write_hits(path, hits)


def drop_hits(path: str | os.PathLike, names: Iterable[str]) -> None:
    """Remove every entry of ``names`` (models whose rows were dropped)."""
    unwanted = set(names)
    hits = read_hits(path)
    if unwanted & set(hits):
        write_hits(path, {name: entries for name, entries in hits.items() if name not in unwanted})


def matching_hits(row: Mapping[str, Any], hits: Mapping[str, Hits]) -> dict[str, np.ndarray]:
    """The bits of ``row``'s model that were measured on what its row reports: the same
    weights and, per dataset, the same dataset contents and an accuracy that agrees."""
    meta = row.get("meta") or {}
    identities = meta.get("datasets") or {}
    matched = {}
    for dataset, entry in hits.items():
        value = row.get(dataset)
        if (entry.weights == meta.get("weights") and identities.get(dataset) == entry.dataset_identity
                and isinstance(value, int | float) and abs(entry.accuracy - float(value)) < 1e-9):
            matched[dataset] = entry.bits
    return matched
