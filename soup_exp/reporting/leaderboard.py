"""The recipe leaderboard: every cooked recipe's result row beside what cooking it cost.

One line per row of kind soup, ensemble or WiSE-FT (each WiSE-FT alpha its own line), with
its held-out, ImageNet and Avg shifts accuracy, its ``soup.json`` cost
(:class:`~soup_exp.artifacts.SoupCost`, read through the one reader of soups; blank for a
soup cooked before costs were recorded, or a row without a soup directory, such as the
authors' published ones) and its gain in points over the best individual model on held-out
(the main table's baseline). Best ImageNet first, ties by name. Rendered by
:mod:`soup_exp.reporting.table`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from soup_exp.artifacts import SoupCost, SoupRecord
from soup_exp.reporting.table import Row, Table, TableRow, describe, interval_note
from soup_exp.reporting.uncertainty import Interval, PairedBootstrap
from soup_exp.vocabulary import AVG_SHIFTS, HELD_OUT, IMAGENET, LABELS

RECIPE_KINDS = frozenset({"soup", "ensemble", "wise_ft"})
GB = 1e9

GAINS = {IMAGENET: "gain_imagenet", AVG_SHIFTS: "gain_avg_shifts"}


def _fixed(digits: int) -> Callable[[float], str]:
    return lambda value: f"{value:.{digits}f}"


def _points(value: float) -> str:
    return f"{value:+.2f}"


# (key, label, how a SoupCost gives it, how it prints)
COSTS: tuple[tuple[str, str, Callable[[SoupCost], float | None], Callable[[float], str]], ...] = (
    ("wall_s", "Wall (s)", lambda c: c.wall_s, _fixed(2)),
    ("peak_host_gb", "Peak host (GB)", lambda c: _gb(c.peak_host_bytes), _fixed(2)),
    ("peak_device_gb", "Peak device (GB)", lambda c: _gb(c.peak_device_bytes), _fixed(2)),
    ("held_out_passes", "Held-out passes", lambda c: c.held_out_passes, _fixed(0)),
    ("ingredient_reads", "Ingredient reads", lambda c: c.ingredient_reads, _fixed(2)),
)

COLUMNS: tuple[tuple[str, str], ...] = (
    (HELD_OUT, LABELS[HELD_OUT]), (IMAGENET, LABELS[IMAGENET]), (AVG_SHIFTS, LABELS[AVG_SHIFTS]),
    *((key, label) for key, label, _, _ in COSTS),
    (GAINS[IMAGENET], f"Gain {LABELS[IMAGENET]} (pts)"), (GAINS[AVG_SHIFTS], f"Gain {LABELS[AVG_SHIFTS]} (pts)"),
)
FORMATS: dict[str, Callable[[float], str]] = {
    **{key: fmt for key, _, _, fmt in COSTS}, **dict.fromkeys(GAINS.values(), _points)}


def build_leaderboard(rows: Sequence[Row], soups: Sequence[SoupRecord], best: TableRow | None,
                      bootstrap: PairedBootstrap | None = None) -> Table:
    """The leaderboard of ``rows`` (normalised result rows), costs from ``soups`` by name,
    gains over ``best`` (the results table's ``best_individual`` line, or None: no gains);
    with ``bootstrap``, the accuracies' intervals and the gains' paired ones."""
    costs = {soup.name: soup.cost for soup in soups}
    lines = [_line(row, costs.get(str(row["name"])), best, bootstrap)
             for row in rows if row.get("kind") in RECIPE_KINDS]
    lines.sort(key=lambda line: (line.values[IMAGENET] is None, -(line.values[IMAGENET] or 0.0), line.model))
    against = f"the best individual on held-out ({best.model})" if best is not None else "no individual model"
    table = Table(lines, columns=COLUMNS, formats=FORMATS,
                  caption=f"Recipe leaderboard: accuracy (%), cost, gain in points over {against}",
                  notes=[f"Gain: points over {against}; cost: what cooking the recipe took (soup.json `cost`), "
                         "blank where its soup recorded none"])
    if bootstrap is not None and table.has_intervals:
        table.notes.append(interval_note(bootstrap))
    return table


def _line(row: Row, cost: SoupCost | None, best: TableRow | None, bootstrap: PairedBootstrap | None) -> TableRow:
    values: dict[str, float | None] = {key: _number(row.get(key)) for key in (HELD_OUT, IMAGENET, AVG_SHIFTS)}
    values.update({key: (_number(read(cost)) if cost is not None else None) for key, _, read, _ in COSTS})
    for key, gain in GAINS.items():
        ours, theirs = values[key], best.values.get(key) if best is not None else None
        values[gain] = 100 * (ours - theirs) if ours is not None and theirs is not None else None
    return TableRow(slot=str(row.get("recipe") or row["name"]), label=describe(row), values=values,
                    model=str(row["name"]), intervals=_intervals(str(row["name"]), best, bootstrap))


def _intervals(model: str, best: TableRow | None, bootstrap: PairedBootstrap | None) -> dict[str, Interval]:
    """Each accuracy's interval and each gain's paired one (in points, as the gain prints)."""
    if bootstrap is None:
        return {}
    found = {key: bootstrap.interval(model, key) for key in (HELD_OUT, IMAGENET, AVG_SHIFTS)}
    if best is not None:
        for key, gain in GAINS.items():
            difference = bootstrap.difference(model, best.model, key)
            if difference is not None:
                found[gain] = Interval(100 * difference.interval.low, 100 * difference.interval.high)
    return {key: interval for key, interval in found.items() if interval is not None}


def _gb(value: int | None) -> float | None:
    return None if value is None else value / GB


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
