"""``results.jsonl``: one row per evaluated model, safe under concurrent sweep jobs.

Rows follow docs/architecture.md "Result rows". The same reader takes our files and the
authors' published ones (``model_name``, no ``kind``), so one report serves both.
"""

from __future__ import annotations

import functools
import json
import os
import re
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from soup_exp.artifacts.correctness import Hits, correctness_path, drop_hits, update_hits
from soup_exp.artifacts.dirs import INGREDIENT_FILE, LEGACY_KINDS, SOUP_FILE
from soup_exp.errors import SoupExpError
from soup_exp.utils.checks import is_fraction
from soup_exp.utils.hashing import stable_hash
from soup_exp.utils.io import atomic_write_text, file_lock, json_default
from soup_exp.vocabulary import ACCURACY_KEYS, AVG_SHIFTS, SHIFTS

# Keys of a row that are not accuracies (anything else numeric is a dataset's accuracy).
RESULT_FIELDS = ("name", "kind", "recipe", "label", "alpha", "interpolated", "num_ingredients", "published",
                 "path", "meta")

# The authors' files carry no `kind`: it follows from the file they are in.
PUBLISHED_FILE_KINDS: dict[str, tuple[str, str | None]] = {
    "individual_model_results": ("finetune", None),
    "uniform_soup_results": ("soup", "uniform"),
    "greedy_soup_results": ("soup", "greedy"),
    "ensemble_results": ("ensemble", "ensemble"),
    "greedy_ensemble_results": ("ensemble", "greedy_ensemble"),
    "learned_soup_results": ("soup", "learned_per_model"),
    "learned_soup_by_layer_results": ("soup", "learned_by_layer"),
    "zeroshot_results": ("zeroshot", None),
}
# ... and for rows found elsewhere, from the model name.
PUBLISHED_NAME_KINDS: dict[str, tuple[str, str | None]] = {
    "uniform_soup": ("soup", "uniform"),
    "greedy_soup": ("soup", "greedy"),
    "ensemble": ("ensemble", "ensemble"),
    "greedy_ensemble": ("ensemble", "greedy_ensemble"),
    "zeroshot": ("zeroshot", None),
    "zero_shot": ("zeroshot", None),
}
LP_INIT_NAME = "model_0"  # the authors' individual model 0 is the linear-probe init
_INDIVIDUAL_NAME = re.compile(r"model_\d+")


class ResultsFormatError(SoupExpError, ValueError):
    """A results file or row that does not follow the results.jsonl format."""


class ResultsStore:
    """A ``results.jsonl`` file that many processes may update at once.

    ``upsert`` holds an exclusive ``flock`` on ``<file>.lock`` while it reads, replaces
    or appends, and rewrites the file through a temp file + rename: readers never see a
    torn line and concurrent writers never lose each other's rows.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.lock_path = self.path.with_name(self.path.name + ".lock")

    @property
    def correctness_path(self) -> Path:
        """The per-image correctness file beside it (:mod:`soup_exp.artifacts.correctness`)."""
        return correctness_path(self.path)

    def upsert(self, row: Mapping[str, Any], config: Any = None,
               hits: Mapping[str, Hits] | None = None) -> dict[str, Any]:
        """Add ``row``, replacing the row of the same ``name``; returns the stored row.

        Adds ``avg_shifts`` when all five shifts are present and ``meta`` (time, code
        version, and ``config_hash`` of ``config`` when given). ``hits``: the row's
        per-image correctness on the datasets just measured, written first, so a row
        never reports bits that are not there.
        """
        stored = with_metadata(normalise_row(row, source=self.path), config)
        with file_lock(self.lock_path):
            if hits:
                update_hits(self.correctness_path, stored["name"], hits)
            rows = self.rows()
            names = [r["name"] for r in rows]
            if stored["name"] in names:
                rows[names.index(stored["name"])] = stored
            else:
                rows.append(stored)
            atomic_write_text(self.path, "".join(_dump(r) for r in rows))
        return stored

    def rows(self) -> list[dict[str, Any]]:
        """All rows, in file order, one per name (the last row of a name wins, as in
        :func:`read_results`; the next write drops the others); an absent file has none."""
        if not self.path.exists():
            return []
        return last_row_per_name(_read_jsonl(self.path), self.path)

    def drop(self, names: Iterable[str]) -> list[str]:
        """Remove the rows of ``names``; returns the names that had one."""
        unwanted = set(names)
        with file_lock(self.lock_path):
            rows = self.rows()
            kept = [r for r in rows if r["name"] not in unwanted]
            if len(kept) < len(rows):
                atomic_write_text(self.path, "".join(_dump(r) for r in kept))
                drop_hits(self.correctness_path, unwanted)
        return [r["name"] for r in rows if r["name"] in unwanted]

    def get(self, name: str) -> dict[str, Any] | None:
        return next((r for r in self.rows() if r["name"] == name), None)


def read_results(paths: Any) -> list[dict[str, Any]]:
    """Rows of every results file in ``paths`` (a file, a directory of ``*.jsonl``, or a
    list of either), normalised: ``name``, ``kind``, ``recipe``, ``avg_shifts``.

    A name seen in several files keeps its last row (with a warning), so a re-evaluation
    listed after the original wins.
    """
    by_name: dict[str, dict[str, Any]] = {}
    for path in results_files(paths):
        for row in ResultsStore(path).rows():
            if row["name"] in by_name:
                warnings.warn(f"result {row['name']!r} appears twice; keeping the one in {path}", stacklevel=2)
            by_name[row["name"]] = row
    return list(by_name.values())


def results_files(paths: Any) -> list[Path]:
    """Expand files, directories and lists into the ``.jsonl`` files to read."""
    if paths is None:
        raise ResultsFormatError("no results given: set results=<results.jsonl, a directory or a list>")
    if isinstance(paths, str | os.PathLike):
        paths = [paths]
    files: list[Path] = []
    for entry in _as_list(paths):
        path = Path(str(entry)).expanduser()
        if path.is_dir():
            found = sorted(path.glob("*.jsonl")) or sorted(path.rglob("*.jsonl"))
            if not found:
                raise ResultsFormatError(f"no *.jsonl results files in directory {path}")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise ResultsFormatError(
                f"results file {path} does not exist (expected a results.jsonl written by "
                "`soup-exp evaluate`, a directory of *.jsonl, or the authors' published files)"
            )
    return files


def normalise_row(row: Mapping[str, Any], source: Path | None = None, where: str | None = None) -> dict[str, Any]:
    """A result row in our schema: ``name`` (from ``model_name`` if need be), ``kind`` and
    ``recipe`` (inferred for the authors' files), ``avg_shifts`` when computable.
    ``where`` (e.g. ``file, line 3``) prefixes errors."""
    out = dict(row)
    name = out.pop("model_name", None) if "name" not in out else out["name"]
    where = where or (f"result row in {source}" if source else "result row")
    if not isinstance(name, str) or not name:
        raise ResultsFormatError(f"{where} has no 'name' (or 'model_name'): {dict(row)}")
    check_row_fields(out, name, where)
    out = {"name": name, **{k: v for k, v in out.items() if k != "name"}}
    if "kind" not in out:
        kind, recipe = infer_kind(name, source)
        out["kind"] = kind
        if recipe is not None:
            out.setdefault("recipe", recipe)
    out["kind"] = LEGACY_KINDS.get(out["kind"], out["kind"])
    if out.get(AVG_SHIFTS) is None:
        avg = avg_shifts(out)
        if avg is not None:
            out[AVG_SHIFTS] = avg
    return out


# The type each non-accuracy field of a row must have when present (None is always allowed).
FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "kind": (str,), "recipe": (str,), "label": (str,), "interpolated": (str,), "path": (str,),
    "alpha": (int, float), "num_ingredients": (int,), "published": (Mapping,), "meta": (Mapping,),
}


def check_row_fields(row: Mapping[str, Any], name: str, where: str) -> None:
    """The one check of a result row's values: accuracies are fractions in [0, 1] (or null),
    the other fields have their types; the error names ``where`` and the key."""
    for key in (*ACCURACY_KEYS, AVG_SHIFTS):
        value = row.get(key)
        if value is not None and not is_fraction(value):
            raise ResultsFormatError(f"{where}: {key}={value!r} in row {name!r} is not an accuracy "
                                     "(accuracies are fractions in [0, 1], or null)")
    for key, types in FIELD_TYPES.items():
        value = row.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, types)):
            expected = " or ".join(t.__name__ if t is not Mapping else "an object" for t in types)
            raise ResultsFormatError(f"{where}: {key}={value!r} in row {name!r} must be {expected} (or null)")


def last_row_per_name(rows: Iterable[dict[str, Any]], source: Path) -> list[dict[str, Any]]:
    """The rule for a name listed twice, everywhere: its last row wins (with a warning)."""
    by_name: dict[str, dict[str, Any]] = {}
    for row in rows:
        if row["name"] in by_name:
            warnings.warn(f"result {row['name']!r} appears twice; keeping its last row, in {source}", stacklevel=3)
            del by_name[row["name"]]
        by_name[row["name"]] = row
    return list(by_name.values())


def infer_kind(name: str, source: Path | None = None) -> tuple[str, str | None]:
    """``(kind, recipe)`` of a row without ``kind``: from the authors' file name first,
    then from the model name."""
    kind = PUBLISHED_FILE_KINDS.get(source.stem) if source is not None else None
    kind = kind or PUBLISHED_NAME_KINDS.get(name)
    if kind is None and _INDIVIDUAL_NAME.fullmatch(name):
        kind = ("finetune", None)
    if kind is None:
        warnings.warn(f"result {name!r} has no 'kind' and none can be inferred; treated as a fine-tune",
                      stacklevel=3)
        kind = ("finetune", None)
    if kind[0] == "finetune" and name == LP_INIT_NAME:
        return ("lp", None)
    return kind


def avg_shifts(row: Mapping[str, Any]) -> float | None:
    """The paper's "Avg shifts": the unweighted mean over its five shifts, or None when
    one is missing. The one definition every stage uses."""
    values = [row.get(k) for k in SHIFTS]
    if any(v is None for v in values):
        return None
    return sum(float(v) for v in values) / len(values)


def with_avg_shifts(accuracies: dict[str, float]) -> dict[str, float]:
    """``accuracies`` with its ``avg_shifts`` entry (when all five shifts are there), in place."""
    mean = avg_shifts(accuracies)
    if mean is not None:
        accuracies[AVG_SHIFTS] = mean
    return accuracies


def row_class_space(row: Mapping[str, Any]) -> dict[str, Any] | None:
    """``{"count", "hash"}`` of the classes a row's model predicts: from ``meta.classes``
    (written by the evaluate stage), else from the model's directory, else None."""
    recorded = (row.get("meta") or {}).get("classes")
    if isinstance(recorded, Mapping) and "count" in recorded:
        return dict(recorded)
    folder = Path(str(row["path"])) if row.get("path") else None
    for name in (INGREDIENT_FILE, SOUP_FILE):
        if folder is not None and (folder / name).is_file():
            try:
                classes = json.loads((folder / name).read_text()).get("classes")
            except (OSError, ValueError):
                return None
            if isinstance(classes, list) and classes:
                return {"count": len(classes), "hash": stable_hash([int(c) for c in classes])}
    return None


def with_metadata(row: dict[str, Any], config: Any = None) -> dict[str, Any]:
    """Add ``meta.time``, ``meta.code_version`` and ``meta.config_hash`` (of ``config``)."""
    meta = dict(row.get("meta") or {})
    meta.setdefault("time", time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    meta.setdefault("code_version", _code_version())
    if config is not None and "config_hash" not in meta:
        from soup_exp.utils.config import loggable_config

        meta["config_hash"] = stable_hash(loggable_config(config))
    return {**row, "meta": meta}


@functools.cache
def _code_version() -> str:
    from soup_exp.utils.runtime import code_version

    return code_version()


def _read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """The rows of one file. A last line cut short (no newline: a crash while appending,
    on a filesystem without atomic appends) is skipped with a warning; the next write
    rewrites the file without it. Any other bad line is an error naming it."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ResultsFormatError(f"cannot read results file {path}: {err.strerror or err}") from err
    lines = data.split(b"\n")
    torn = len(lines) - 1 if not data.endswith(b"\n") else -1  # the unterminated line, if any
    for index, line in enumerate(lines):
        if not line.strip():
            continue
        number = index + 1
        try:
            row = json.loads(line.decode("utf-8"))
        except ValueError as err:  # invalid JSON or UTF-8
            if index == torn:
                warnings.warn(f"{path}, line {number}: an incomplete last line (an interrupted write) is "
                              f"skipped: {line[:60]!r}; the next evaluation rewrites the file without it",
                              stacklevel=3)
                continue
            raise ResultsFormatError(f"{path}, line {number}: not valid JSON ({err})") from err
        if not isinstance(row, dict):
            raise ResultsFormatError(f"{path}, line {number}: expected a JSON object per line")
        yield normalise_row(row, source=path, where=f"{path}, line {number}")


def _dump(row: Mapping[str, Any]) -> str:
    return json.dumps(row, default=json_default) + "\n"


def _as_list(paths: Any) -> Iterable[Any]:
    if isinstance(paths, Mapping):
        raise ResultsFormatError(f"results must be a path or a list of paths, got a mapping: {paths}")
    return list(paths)
