"""The reproduction check: our numbers for the authors' own models beside theirs.

When the ingredients were imported from the authors' release (``soup-exp import``), each
result row carries the authors' published accuracies of that very checkpoint
(``published``). The check lists every such model, and the uniform soup, greedy soup and
ensemble of the whole imported pool beside the authors' ``uniform_soup``, ``greedy_soup``
and ``ensemble`` rows, with the difference in points and a summary per dataset.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from soup_exp.artifacts.results import avg_shifts
from soup_exp.reporting.table import COLUMNS, Table, TableRow
from soup_exp.vocabulary import AVG_SHIFTS

Row = Mapping[str, Any]

# Our recipe -> the authors' published row of the same soup of all 72 models.
PUBLISHED_SOUPS = {"uniform": "uniform_soup", "greedy": "greedy_soup", "ensemble": "ensemble"}


def reproduction_table(rows: Sequence[Row], published_soups: Sequence[Row] = ()) -> Table | None:
    """Ours / published / difference for each imported model (and the pool's soups when
    every model of the pool is an import); None when no row comes from an import."""
    imported = [r for r in rows if isinstance(r.get("published"), Mapping)]
    if not imported:
        return None
    pairs = [(r["name"], r, r["published"]) for r in imported]
    pool = [r for r in rows if r.get("kind") in {"lp", "finetune"}]
    if len(imported) == len(pool):
        by_name = {str(r["name"]): r for r in published_soups}
        for recipe, theirs in PUBLISHED_SOUPS.items():
            ours = next((r for r in rows if r.get("recipe") == recipe and r.get("kind") != "wise_ft"), None)
            if ours is not None and theirs in by_name:
                pairs.append((f"{ours['name']} (all {len(pool)})", ours, by_name[theirs]))
    lines: list[TableRow] = []
    deltas: dict[str, list[float]] = {key: [] for key, _ in COLUMNS}
    for label, ours, theirs in pairs:
        lines.append(TableRow("ours", f"{label} [ours]", _values(ours), model=str(ours["name"])))
        lines.append(TableRow("published", f"{label} [published]", _values(theirs), model=str(ours["name"])))
        delta = {k: _delta(ours, theirs, k) for k, _ in COLUMNS}
        lines.append(TableRow("delta", "Δ ours − published", delta, model=str(ours["name"]), delta=True))
        for key, value in delta.items():
            if value is not None:
                deltas[key].append(value)
    table = Table(lines, caption="Reproduction check: the authors' checkpoints evaluated here vs their published "
                                 "accuracies (%); Δ in points")
    table.notes = [_summary(label, deltas[key]) for key, label in COLUMNS if deltas[key]]
    return table


def _values(row: Row) -> dict[str, float | None]:
    return {key: (float(row[key]) if row.get(key) is not None else None) for key, _ in COLUMNS}


def _delta(ours: Row, theirs: Row, key: str) -> float | None:
    a, b = ours.get(key), theirs.get(key)
    if key == AVG_SHIFTS and b is None:
        b = avg_shifts(theirs)
    return None if a is None or b is None else 100 * (float(a) - float(b))


def _summary(label: str, deltas: list[float]) -> str:
    worst = max(deltas, key=abs)
    close = sum(abs(d) < 0.1 for d in deltas)
    return f"{label}: max |Δ| {abs(worst):.2f} points ({worst:+.2f}); {close} of {len(deltas)} within 0.1"
