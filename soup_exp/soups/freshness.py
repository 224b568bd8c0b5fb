"""When a cooked soup may be reused: only while everything it was cooked from is unchanged.

A soup's ``soup.json`` records its ``inputs``: the recipe and its parameters, the pool (each
ingredient's name and weights identity), the numerics of the sum, and what the recipe read
besides (the zero-shot model, soups cooked before it, the held-out data and scores, the
seed that orders held-out batches). A later run recomputes exactly those inputs; any
difference re-cooks the soup and the log says which.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from soup_exp.utils.hashing import file_stamp

INPUTS_KEY = "inputs"


def as_json(value: Any) -> Any:
    """``value`` as it reads back from soup.json (tuples become lists), so records compare."""
    import json

    from soup_exp.utils.io import json_default

    return json.loads(json.dumps(value, default=json_default))


def weights_identity(path: str | os.PathLike | None) -> list[int] | None:
    """Size and modification time of a weights file: cheap to read, changed by any rewrite,
    kept by ``cp -a`` and ``mv`` (a moved experiment's soups stay fresh)."""
    if path is None:
        return None
    try:
        return list(file_stamp(path))
    except FileNotFoundError:
        return None


def pool_identity(ingredients: Any) -> list[list[Any]]:
    """``[name, size, mtime_ns]`` of every ingredient, in pool order (the order fixes the sum)."""
    return [[ing.name, *(weights_identity(ing.path) or [None, None])] for ing in ingredients]


def describe_change(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> str:
    """What differs between two ``inputs`` records, in a user's words."""
    reasons = []
    for key in sorted(set(recorded) | set(current), key=lambda k: (_ORDER.index(k) if k in _ORDER else 99, k)):
        before, now = recorded.get(key), current.get(key)
        if before == now:
            continue
        if key == "pool":
            reasons.append(_pool_change(before or [], now or []))
        elif key == "params":
            reasons.append("recipe parameters changed (" + ", ".join(
                f"{k}: {(before or {}).get(k)!r} -> {(now or {}).get(k)!r}" for k in _changed(before, now)) + ")")
        elif key == "models":
            reasons.append(f"the models it was cooked from changed ({', '.join(_changed(before, now))})")
        else:
            reasons.append(_WORDS.get(key, f"{key} changed"))
    return "; ".join(reasons) or "nothing"


def _changed(before: Mapping | None, now: Mapping | None) -> list[str]:
    before, now = before or {}, now or {}
    return sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))


def _pool_change(before: list, now: list) -> str:
    old, new = [entry[0] for entry in before], [entry[0] for entry in now]
    added = [n for n in new if n not in old]
    removed = [n for n in old if n not in new]
    parts = []
    if added:
        parts.append("added " + ", ".join(added))
    if removed:
        parts.append("removed " + ", ".join(removed))
    rewritten = [a[0] for a in now if a[0] in old and a != before[old.index(a[0])]]
    if rewritten:
        parts.append("new weights for " + ", ".join(rewritten))
    if not parts:
        parts.append("ingredients reordered")
    return f"the pool changed ({len(old)} -> {len(new)} ingredients: {'; '.join(parts)})"


_ORDER = ["recipe", "params", "pool", "numerics", "zeroshot", "models", "held_out", "scores", "seed"]
_WORDS = {
    "recipe": "another recipe made it",
    "numerics": "the soup's numerics changed (soup.accumulate_dtype or soup.arithmetic)",
    "zeroshot": "the zero-shot model changed",
    "held_out": "the held-out data or its numerics changed",
    "scores": "the ingredients' held-out scores changed",
    "seed": "the seed (which orders the held-out batches) changed",
}


def recorded_inputs(soup_file: Path) -> Mapping[str, Any] | None:
    """The ``inputs`` a finished soup was cooked from, or None for a soup.json without them
    (written by an older soup-exp)."""
    from soup_exp.utils.io import read_json

    try:
        record = read_json(soup_file)
    except (OSError, ValueError):
        return None
    inputs = record.get(INPUTS_KEY) if isinstance(record, dict) else None
    return inputs if isinstance(inputs, dict) else None
