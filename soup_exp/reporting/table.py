"""The paper's results table from result rows, rendered as Markdown, LaTeX and CSV.

The first lines are the baselines every experiment has (zero-shot, LP init, the best
individual model on held-out); then one line per recipe found in the results, whatever
recipe it is: its label comes from the row (written from the recipe's YAML by the soup
stage), else from the packaged recipe file, else its name. A recipe with several rows
(WiSE-FT's alphas) shows the one with the best held-out accuracy, or all of them.
"""

from __future__ import annotations

import csv
import io
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from soup_exp.artifacts.results import RESULT_FIELDS
from soup_exp.errors import ConfigError
from soup_exp.reporting.uncertainty import Difference, Interval, PairedBootstrap
from soup_exp.vocabulary import AVG_SHIFTS, HELD_OUT, IMAGENET, LABELS

Row = Mapping[str, Any]

COLUMNS: tuple[tuple[str, str], ...] = tuple(LABELS.items())

# Where the paper's recipes go in the table; other recipes follow in order of appearance.
PAPER_ORDER = ("uniform", "greedy", "learned_per_model", "learned_by_layer", "model_stock",
               "ensemble", "greedy_ensemble", "wise_ft")
PER_RECIPE = ("best", "all")


@dataclass(frozen=True)
class TableRow:
    """One table line: ``values`` are fractions (or percentage-point deltas when ``delta``);
    ``intervals``: the paired bootstrap interval of a value, in the same unit."""

    slot: str
    label: str
    values: Mapping[str, float | None]
    model: str = ""
    delta: bool = False
    intervals: Mapping[str, Interval] = field(default_factory=dict)


@dataclass
class Table:
    """Rows under ``columns`` (key, label); ``formats`` prints a column's values its own way
    (a cost in seconds, a count), every other column as :meth:`cell` says."""

    rows: list[TableRow]
    columns: tuple[tuple[str, str], ...] = COLUMNS
    caption: str = "Top-1 accuracy (%)"
    meta: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    formats: Mapping[str, Callable[[float], str]] = field(default_factory=dict)

    def row(self, slot: str) -> TableRow | None:
        return next((r for r in self.rows if r.slot == slot), None)

    def cell(self, row: TableRow, key: str) -> str:
        """The printed value: percent with 2 decimals, signed points for deltas."""
        value = row.values.get(key)
        if value is None:
            return ""
        if key in self.formats:
            return self.formats[key](value)
        return f"{value:+.2f}" if row.delta else f"{100 * value:.2f}"

    def spread(self, row: TableRow, key: str) -> str:
        """Half the width of the value's interval, as the cell prints it (``0.35`` in
        ``81.03 ± 0.35``), or empty without one."""
        interval = row.intervals.get(key)
        if interval is None or row.values.get(key) is None:
            return ""
        return f"{self.scale(row, key) * interval.half_width:.2f}"

    def scale(self, row: TableRow, key: str) -> float:
        """100 where the cell prints a fraction as percent; 1 for points and own formats."""
        return 1.0 if row.delta or key in self.formats else 100.0

    @property
    def has_intervals(self) -> bool:
        return any(row.intervals for row in self.rows)


def build_table(rows: Sequence[Row], per_recipe: str = "best", bootstrap: PairedBootstrap | None = None) -> Table:
    """The paper's table from normalised result rows (see ``read_results``); with
    ``bootstrap``, each accuracy's interval and each finding's paired test."""
    if per_recipe not in PER_RECIPE:
        raise ConfigError(f"per_recipe={per_recipe!r}: expected one of {', '.join(PER_RECIPE)}")
    columns = COLUMNS + tuple((key, key) for key in extra_columns(rows))
    lines = [_line(slot, label(row), row, columns, bootstrap)
             for slot, label, kinds in BASELINES for row in _best_on_held_out(_of_kinds(rows, kinds), slot)]
    for recipe, group in recipe_groups(rows).items():
        chosen = group if per_recipe == "all" or len(group) == 1 else _best_on_held_out(group, recipe)
        lines += [_line(recipe, describe(row), row, columns, bootstrap) for row in chosen]
    table = Table(lines, columns=columns)
    table.notes = findings(table, bootstrap)
    if bootstrap is not None and table.has_intervals:
        table.notes.append(interval_note(bootstrap))
    return table


def interval_note(bootstrap: PairedBootstrap) -> str:
    """How to read a table's ``±`` and its summary's significance."""
    return (f"±: half the width of the paired bootstrap's {100 * bootstrap.level:g} % interval "
            f"({bootstrap.replicates} replicates, seed {bootstrap.seed}); significant: McNemar's "
            f"exact p < {1 - bootstrap.level:.2g} (Avg shifts: its interval excludes 0)")


BASELINES: tuple[tuple[str, Callable[[Row], str], frozenset[str]], ...] = (
    ("zeroshot", lambda r: "Zero-shot", frozenset({"zeroshot"})),
    ("lp_init", lambda r: "LP init", frozenset({"lp"})),
    ("best_individual", lambda r: f"Best individual on held-out ({r['name']})", frozenset({"lp", "finetune"})),
)


def recipe_groups(rows: Sequence[Row]) -> dict[str, list[Row]]:
    """Rows of every recipe (soups, ensembles, WiSE-FT), the paper's recipes first."""
    groups: dict[str, list[Row]] = {}
    for row in rows:
        if row.get("recipe") and row.get("kind") not in {"zeroshot", "lp", "finetune"}:
            groups.setdefault(str(row["recipe"]), []).append(row)
    rank = {name: i for i, name in enumerate(PAPER_ORDER)}
    return dict(sorted(groups.items(), key=lambda item: rank.get(item[0], len(rank))))


def describe(row: Row) -> str:
    """A recipe row's label with what distinguishes it: WiSE-FT's alpha, a soup's size."""
    text = str(row.get("label") or recipe_label(str(row.get("recipe"))) or row.get("recipe") or row["name"])
    if row.get("alpha") is not None:
        parts = [f"α={float(row['alpha']):.2f}"] + ([str(row["interpolated"])] if row.get("interpolated") else [])
        return f"{text} ({', '.join(parts)})"
    n = row.get("num_ingredients")
    return f"{text} ({n} model{'s' if n != 1 else ''})" if isinstance(n, int) else text


@cache
def recipe_label(recipe: str) -> str | None:
    """The ``label`` of a packaged recipe file, for rows that carry none (the authors' files)."""
    from omegaconf import OmegaConf

    from soup_exp.stages.entry import packaged_config_dir

    path = packaged_config_dir() / "recipes" / f"{recipe}.yaml"
    return OmegaConf.load(path).get("label") if path.is_file() else None


def extra_columns(rows: Sequence[Row]) -> list[str]:
    """Accuracy keys beyond the paper's (a user's evaluation datasets), in order of appearance."""
    known = {key for key, _ in COLUMNS} | set(RESULT_FIELDS)
    extra: dict[str, None] = {}
    for row in rows:
        for key, value in row.items():
            if key not in known and isinstance(value, int | float) and not isinstance(value, bool):
                extra[key] = None
    return list(extra)


# The paper's headline comparisons as (baseline slot, compared slot): fine-tuning vs
# zero-shot, soups vs the best single model, the greedy soup vs the costlier ensemble.
FINDINGS = (
    ("zeroshot", "best_individual"),
    ("best_individual", "greedy"),
    ("best_individual", "uniform"),
    ("ensemble", "greedy"),
)


def findings(table: Table, bootstrap: PairedBootstrap | None = None) -> list[str]:
    """One line per headline comparison present in the table, in points on held-out
    (where the soup recipes are selected), ImageNet and Avg shifts; with ``bootstrap``,
    each difference's paired interval, McNemar's p and whether it is significant."""
    lines = []
    for base_slot, claim_slot in FINDINGS:
        base, claim = table.row(base_slot), table.row(claim_slot)
        if base is None or claim is None:
            continue
        deltas, tested = [], []
        for key, label in ((HELD_OUT, "held-out"), (IMAGENET, LABELS[IMAGENET]), (AVG_SHIFTS, LABELS[AVG_SHIFTS])):
            a, b = base.values.get(key), claim.values.get(key)
            if a is not None and b is not None:
                deltas.append(f"{label} {100 * (b - a):+.2f}")
                difference = bootstrap.difference(claim.model, base.model, key) if bootstrap is not None else None
                tested.append(deltas[-1] + (_tested(difference) if difference is not None else ""))
        if tested != deltas:
            lines.append(f"{claim.label} vs {base.label}, in points: {'; '.join(tested)}")
        elif deltas:
            lines.append(f"{claim.label} vs {base.label}: {', '.join(deltas)} points")
    return lines


def _tested(difference: Difference) -> str:
    """`` [+0.40, +1.45] (p=0.003, significant)``: the interval in points, McNemar's p."""
    low, high = 100 * difference.interval.low, 100 * difference.interval.high
    test = f"p={difference.mcnemar.p_value:.2g}, " if difference.mcnemar is not None else ""
    return f" [{low:+.2f}, {high:+.2f}] ({test}{'significant' if difference.significant else 'not significant'})"


def to_markdown(table: Table) -> str:
    header = ["Method", *(label for _, label in table.columns)]
    lines = [md_line(header), md_line(["---", *("---:" for _ in table.columns)])]
    for row in table.rows:
        cells = [_with_spread(table, row, key, " ± ") or "–" for key, _ in table.columns]
        lines.append(md_line([row.label.replace("|", "\\|"), *cells]))
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
        " & ".join(["Method", *(latex_escape(label) for _, label in table.columns)]) + " \\\\",
        "\\midrule",
    ]
    for row in table.rows:
        cells = [_with_spread(table, row, key, r" $\pm$ ") or "--" for key, _ in table.columns]
        lines.append(" & ".join([latex_escape(row.label), *cells]) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(lines) + "\n"


def to_csv(table: Table) -> str:
    """One column per value; with intervals, each value's ``<key>_low`` and ``<key>_high`` beside it."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    bounds = table.has_intervals
    writer.writerow(["method", "model", *(name for key, _ in table.columns
                                          for name in ((key, f"{key}_low", f"{key}_high") if bounds else (key,)))])
    for row in table.rows:
        cells = []
        for key, _ in table.columns:
            cells.append(table.cell(row, key))
            if bounds:
                cells += _bounds(table, row, key)
        writer.writerow([row.label, row.model, *cells])
    return buffer.getvalue()


def _with_spread(table: Table, row: TableRow, key: str, sign: str) -> str:
    cell, spread = table.cell(row, key), table.spread(row, key)
    return f"{cell}{sign}{spread}" if cell and spread else cell


def _bounds(table: Table, row: TableRow, key: str) -> list[str]:
    interval = row.intervals.get(key)
    if interval is None or row.values.get(key) is None:
        return ["", ""]
    scale = table.scale(row, key)
    return [f"{scale * interval.low:.2f}", f"{scale * interval.high:.2f}"]


RENDERERS: dict[str, Callable[[Table], str]] = {"md": to_markdown, "tex": to_latex, "csv": to_csv}


def check_formats(formats: Sequence[str]) -> list[str]:
    """``formats`` when every one is a table format (md, tex, csv); else the error naming them."""
    unknown = [f for f in formats if f not in RENDERERS]
    if unknown:
        raise ConfigError(f"formats={list(formats)}: unknown {unknown}; expected any of {list(RENDERERS)}")
    return list(formats)


def render(table: Table, fmt: str) -> str:
    if fmt not in RENDERERS:
        raise ConfigError(f"unknown table format {fmt!r}; expected one of {', '.join(RENDERERS)}")
    return RENDERERS[fmt](table)


# --- selection ---------------------------------------------------------------------------


def _of_kinds(rows: Sequence[Row], kinds: frozenset[str]) -> list[Row]:
    return [r for r in rows if r.get("kind") in kinds]


def _best_on_held_out(found: Sequence[Row], what: str) -> list[Row]:
    """The row with the best held-out accuracy: choosing on ImageNet itself would be test-set selection."""
    scored = [r for r in found if r.get(HELD_OUT) is not None]
    if scored:
        return [max(scored, key=lambda r: float(r[HELD_OUT]))]
    if len(found) == 1:
        return list(found)  # nothing to choose between
    if found:
        warnings.warn(f"{len(found)} {what} rows but none has a held-out accuracy ({HELD_OUT}) to "
                      "choose by; left out of the table", stacklevel=3)
    return []


def _line(slot: str, label: str, row: Row, columns: Sequence[tuple[str, str]],
          bootstrap: PairedBootstrap | None = None) -> TableRow:
    values = {key: (float(row[key]) if row.get(key) is not None else None) for key, _ in columns}
    intervals = {}
    if bootstrap is not None:
        found = {key: bootstrap.interval(str(row["name"]), key) for key, _ in columns}
        intervals = {key: interval for key, interval in found.items() if interval is not None}
    return TableRow(slot=slot, label=label, values=values, model=str(row["name"]), intervals=intervals)


def md_line(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


_LATEX_SPECIAL = {"&": r"\&", "%": r"\%", "_": r"\_", "#": r"\#", "$": r"\$", "α": r"$\alpha$", "Δ": r"$\Delta$",
                  "±": r"$\pm$", "\u2212": "$-$", "–": "--"}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)
