"""The paper's results table from result rows, rendered as Markdown, LaTeX and CSV.

Each table line is a *slot* (zero-shot, LP init, best individual, each soup recipe,
ensembles, WiSE-FT, model stock) with a selector that picks its row(s) from the
results; slots with no matching row are left out, so partial experiments still render.
"""

from __future__ import annotations

import csv
import functools
import io
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from soup_exp.errors import ConfigError
from soup_exp.tracking.results import HELD_OUT

Row = Mapping[str, Any]

COLUMNS: tuple[tuple[str, str], ...] = (
    (HELD_OUT, "Held-out"),
    ("ImageNet", "ImageNet"),
    ("ImageNetV2", "IN-V2"),
    ("ImageNetSketch", "IN-Sketch"),
    ("ImageNetR", "IN-R"),
    ("ObjectNet", "ObjectNet"),
    ("ImageNetA", "IN-A"),
    ("avg_shifts", "Avg shifts"),
)


@dataclass(frozen=True)
class TableRow:
    """One table line: ``values`` are fractions (or percentage-point deltas when ``delta``)."""

    slot: str
    label: str
    values: Mapping[str, float | None]
    model: str = ""
    delta: bool = False


@dataclass
class Table:
    rows: list[TableRow]
    columns: tuple[tuple[str, str], ...] = COLUMNS
    caption: str = "Top-1 accuracy (%)"
    meta: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def row(self, slot: str) -> TableRow | None:
        return next((r for r in self.rows if r.slot == slot), None)

    def cell(self, row: TableRow, key: str) -> str:
        """The printed value: percent with 2 decimals, signed points for deltas."""
        value = row.values.get(key)
        if value is None:
            return ""
        return f"{value:+.2f}" if row.delta else f"{100 * value:.2f}"


def build_table(rows: Sequence[Row], wise_ft: str = "best") -> Table:
    """The paper's table from normalised result rows (see ``read_results``).

    ``wise_ft``: ``best`` keeps the WiSE-FT mixing coefficient with the best held-out
    accuracy, ``all`` lists every evaluated one.
    """
    if wise_ft not in ("best", "all"):
        raise ConfigError(f"wise_ft={wise_ft!r}: expected 'best' or 'all'")
    selectors = {**SLOTS, "wise_ft": functools.partial(_select_wise_ft, mode=wise_ft)}
    table = Table([_table_row(slot, row) for slot, select in selectors.items() for row in select(rows)])
    table.notes = findings(table)
    return table


# The paper's headline comparisons as (baseline slot, compared slot): fine-tuning vs
# zero-shot, soups vs the best single model, the greedy soup vs the costlier ensemble.
FINDINGS = (
    ("zeroshot", "best_individual"),
    ("best_individual", "greedy_soup"),
    ("best_individual", "uniform_soup"),
    ("ensemble", "greedy_soup"),
)


def findings(table: Table) -> list[str]:
    """One line per headline comparison present in the table, in points on held-out
    (where the soup recipes are selected), ImageNet and Avg shifts."""
    lines = []
    for base_slot, claim_slot in FINDINGS:
        base, claim = table.row(base_slot), table.row(claim_slot)
        if base is None or claim is None:
            continue
        deltas = []
        for key, label in ((HELD_OUT, "held-out"), ("ImageNet", "ImageNet"), ("avg_shifts", "Avg shifts")):
            a, b = base.values.get(key), claim.values.get(key)
            if a is not None and b is not None:
                deltas.append(f"{label} {100 * (b - a):+.2f}")
        if deltas:
            lines.append(f"{claim.label} vs {base.label}: {', '.join(deltas)} points")
    return lines


def to_markdown(table: Table) -> str:
    header = ["Method", *(label for _, label in table.columns)]
    lines = [_md_line(header), _md_line(["---", *("---:" for _ in table.columns)])]
    for row in table.rows:
        cells = [table.cell(row, key) or "–" for key, _ in table.columns]
        lines.append(_md_line([row.label.replace("|", "\\|"), *cells]))
    if table.notes:
        lines += ["", *(f"- {note}" for note in table.notes)]
    return "\n".join(lines) + "\n"


def to_latex(table: Table) -> str:
    """A booktabs ``tabular`` (needs ``\\usepackage{booktabs}``)."""
    spec = "l" + "r" * len(table.columns)
    lines = [
        f"% {table.caption}",
        f"\\begin{{tabular}}{{{spec}}}",
        "\\toprule",
        " & ".join(["Method", *(_latex_escape(label) for _, label in table.columns)]) + " \\\\",
        "\\midrule",
    ]
    for row in table.rows:
        cells = [table.cell(row, key) or "--" for key, _ in table.columns]
        lines.append(" & ".join([_latex_escape(row.label), *cells]) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(lines) + "\n"


def to_csv(table: Table) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["method", "model", *(key for key, _ in table.columns)])
    for row in table.rows:
        writer.writerow([row.label, row.model, *(table.cell(row, key) for key, _ in table.columns)])
    return buffer.getvalue()


RENDERERS: dict[str, Callable[[Table], str]] = {"md": to_markdown, "tex": to_latex, "csv": to_csv}


def render(table: Table, fmt: str) -> str:
    if fmt not in RENDERERS:
        raise ConfigError(f"unknown table format {fmt!r}; expected one of {', '.join(RENDERERS)}")
    return RENDERERS[fmt](table)


# --- slot selectors --------------------------------------------------------------------


def _of(kinds: Sequence[str], recipe: str | None = None) -> Callable[[Sequence[Row]], list[Row]]:
    def matching(rows: Sequence[Row]) -> list[Row]:
        return [r for r in rows if r.get("kind") in kinds and (recipe is None or r.get("recipe") == recipe)]

    return matching


def _best_on_held_out(candidates: Callable[[Sequence[Row]], list[Row]], what: str) -> Callable[[Sequence[Row]], list[Row]]:
    """The row with the best held-out accuracy: choosing on ImageNet itself would be test-set selection."""

    def select(rows: Sequence[Row]) -> list[Row]:
        found = candidates(rows)
        scored = [r for r in found if r.get(HELD_OUT) is not None]
        if scored:
            return [max(scored, key=lambda r: float(r[HELD_OUT]))]
        if len(found) == 1:
            return found  # nothing to choose between
        if found:
            warnings.warn(
                f"{len(found)} {what} rows but none has a held-out accuracy ({HELD_OUT}) to "
                "choose by; left out of the table",
                stacklevel=2,
            )
        return []

    return select


def _select_wise_ft(rows: Sequence[Row], mode: str) -> list[Row]:
    candidates = _of(["wise_ft"])(rows)
    if mode == "all":
        return sorted(candidates, key=lambda r: (str(r.get("recipe")), float(r.get("alpha") or 0.0)))
    return _best_on_held_out(_of(["wise_ft"]), "WiSE-FT model")(rows)


SLOTS: dict[str, Callable[[Sequence[Row]], list[Row]]] = {
    "zeroshot": _best_on_held_out(_of(["zeroshot"]), "zero-shot model"),
    "lp_init": _best_on_held_out(_of(["lp"]), "LP init"),
    "best_individual": _best_on_held_out(_of(["individual", "lp"]), "individual model"),
    "uniform_soup": _best_on_held_out(_of(["soup"], "uniform"), "uniform soup"),
    "greedy_soup": _best_on_held_out(_of(["soup"], "greedy"), "greedy soup"),
    "learned_soup": _best_on_held_out(_of(["soup"], "learned_per_model"), "learned soup"),
    "learned_soup_by_layer": _best_on_held_out(_of(["soup"], "learned_by_layer"), "learned soup (by layer)"),
    "model_stock": _best_on_held_out(_of(["soup"], "model_stock"), "model stock"),
    "ensemble": _best_on_held_out(_of(["ensemble"], "ensemble"), "ensemble"),
    "greedy_ensemble": _best_on_held_out(_of(["ensemble"], "greedy_ensemble"), "greedy ensemble"),
    "wise_ft": lambda rows: _select_wise_ft(rows, "best"),
}


def _count(row: Row, unit: str = "") -> str:
    n = row.get("num_ingredients")
    return f" ({n}{unit})" if n is not None else ""


LABELS: dict[str, Callable[[Row], str]] = {
    "zeroshot": lambda r: "Zero-shot",
    "lp_init": lambda r: "LP init",
    "best_individual": lambda r: f"Best individual on held-out ({r['name']})",
    "uniform_soup": lambda r: "Uniform soup" + _count(r),
    "greedy_soup": lambda r: "Greedy soup" + _count(r, " ingredients"),
    "learned_soup": lambda r: "Learned soup" + _count(r),
    "learned_soup_by_layer": lambda r: "Learned soup, by layer" + _count(r),
    "model_stock": lambda r: "Model stock" + _count(r),
    "ensemble": lambda r: "Ensemble" + _count(r),
    "greedy_ensemble": lambda r: "Greedy ensemble" + _count(r, " models"),
    "wise_ft": lambda r: _wise_ft_label(r),
}


def _wise_ft_label(row: Row) -> str:
    parts = [f"α={float(row['alpha']):.2f}"] if row.get("alpha") is not None else []
    parts += [str(row["recipe"])] if row.get("recipe") else []
    return "WiSE-FT" + (f" ({', '.join(parts)})" if parts else "")


def _table_row(slot: str, row: Row) -> TableRow:
    values = {key: (float(row[key]) if row.get(key) is not None else None) for key, _ in COLUMNS}
    return TableRow(slot=slot, label=LABELS[slot](row), values=values, model=str(row["name"]))


def _md_line(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


_LATEX_SPECIAL = {"&": r"\&", "%": r"\%", "_": r"\_", "#": r"\#", "$": r"\$", "α": r"$\alpha$", "Δ": r"$\Delta$"}


def _latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)
