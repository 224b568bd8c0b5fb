"""Analysis folders: ``<analysis_dir>/<name>/`` holds one analysis's figures (PNG + PDF),
their data (CSV) and ``analysis.json``, written last.

``analysis.json`` keys: ``name``, ``label``, ``target`` (the callable), ``params``, ``key``
(hash of the pool, the configuration that shapes the numbers, and the parameters),
``inputs`` (files read besides the pool, e.g. soups: ``{path: [size, mtime_ns]}``),
``numbers`` (what the analysis returned), ``outputs`` (file names in the folder),
``seconds``, ``code_version``, ``created``. An analysis whose record has the same key and
whose inputs are unchanged is finished; partial work of an interrupted one lives in
``.partial.json`` (bound to the same key) until the record is written.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from soup_exp.artifacts.dirs import read_record
from soup_exp.utils.hashing import file_stamp
from soup_exp.utils.io import atomic_write_json, read_json

ANALYSIS_FILE = "analysis.json"
PARTIAL_FILE = ".partial.json"


def file_stats(paths: Iterable[str | os.PathLike]) -> dict[str, list[int]]:
    """``{path: [size, mtime_ns]}`` of files that exist (the identity of an input)."""
    stats = {}
    for path in paths:
        try:
            stats[str(Path(path).resolve())] = list(file_stamp(path))
        except OSError:
            continue
    return stats


def finished_analysis(folder: Path, key: str) -> dict[str, Any] | None:
    """The record in ``folder`` if it was made for ``key`` and its inputs are unchanged."""
    path = folder / ANALYSIS_FILE
    if not path.is_file():
        return None
    record = read_record(path)
    if record.get("key") != key:
        return None
    inputs = record.get("inputs") or {}
    if file_stats(inputs) != {k: list(v) for k, v in inputs.items()}:
        return None
    if any(not (folder / name).is_file() for name in record.get("outputs") or []):
        return None
    return record


def write_analysis_record(folder: Path, record: Mapping[str, Any]) -> Path:
    path = folder / ANALYSIS_FILE
    atomic_write_json(path, dict(record))
    (folder / PARTIAL_FILE).unlink(missing_ok=True)
    return path


def read_partial(folder: Path, key: str) -> dict[str, Any]:
    """Work saved by an interrupted run of the same analysis on the same inputs, or {}."""
    path = folder / PARTIAL_FILE
    if not path.is_file():
        return {}
    try:
        saved = read_json(path)
    except ValueError:
        return {}
    return dict(saved.get("data") or {}) if saved.get("key") == key else {}


def write_partial(folder: Path, key: str, data: Mapping[str, Any]) -> None:
    atomic_write_json(folder / PARTIAL_FILE, {"key": key, "data": dict(data)})


def analysis_records(analysis_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """Every finished analysis under ``analysis_dir`` (for the report), in name order,
    each with ``_dir`` (its folder)."""
    root = Path(analysis_dir)
    if not root.is_dir():
        return []
    records = []
    for folder in sorted(p for p in root.iterdir() if (p / ANALYSIS_FILE).is_file()):
        records.append({**read_record(folder / ANALYSIS_FILE), "_dir": str(folder)})
    return records
