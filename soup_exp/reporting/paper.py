"""Published numbers to compare a run against, and the side-by-side comparison table.

The authors' ViT-B/32 result files ship inside the package (``reference/``) because
users' machines do not have the project's shared folder. ``compare`` is a registry name
(``paper_vitb32``) or a path to any other results (a previous run, another model).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from soup_exp.artifacts.results import normalise_row, read_results
from soup_exp.errors import ConfigError
from soup_exp.reporting.table import Table, TableRow, build_table

# Published result files shipped in soup_exp/reference/<dir>.
PUBLISHED: dict[str, str] = {"paper_vitb32": "model-soups-vitb32"}

# Numbers given only in the paper's text (Table 1 of arXiv 2203.05482), not in the files.
PAPER_TEXT_ROWS: dict[str, list[dict[str, Any]]] = {
    "paper_vitb32": [
        {"name": "learned_soup", "kind": "soup", "recipe": "learned_per_model",
         "label": "Learned soup (paper text)", "ImageNet": 0.8089, "avg_shifts": 0.5107},
        {"name": "learned_soup_by_layer", "kind": "soup", "recipe": "learned_by_layer",
         "label": "Learned soup, by layer (paper text)", "ImageNet": 0.8137, "avg_shifts": 0.5087},
    ],
}


def reference_dir(name: str) -> Path:
    """The packaged directory of published result files for ``name``."""
    if name not in PUBLISHED:
        raise ConfigError(f"no published results named {name!r}; known: {', '.join(PUBLISHED)}")
    path = Path(str(resources.files("soup_exp").joinpath("reference", PUBLISHED[name])))
    if not path.is_dir():
        raise ConfigError(f"published results {name!r} are missing from the installation ({path})")
    return path


def published_rows(name: str) -> list[dict[str, Any]]:
    """The authors' result rows (normalised like ours) plus numbers quoted in the paper text."""
    rows = read_results(reference_dir(name))
    return rows + [normalise_row(row) for row in PAPER_TEXT_ROWS.get(name, [])]


def reference_rows(compare: str) -> tuple[str, list[dict[str, Any]]]:
    """``(label, rows)`` for ``compare``: a published set's name or a results path."""
    if compare in PUBLISHED:
        return "paper", published_rows(compare)
    if Path(compare).expanduser().exists():
        return Path(compare).stem or "reference", read_results(compare)
    raise ConfigError(
        f"compare={compare!r} is neither a published result set ({', '.join(PUBLISHED)}) "
        "nor an existing results file or directory"
    )


def compare_tables(ours: Table, reference: Table, reference_label: str = "paper") -> Table:
    """Each method's line from both tables, then the difference in percentage points."""
    slots = list(dict.fromkeys([r.slot for r in ours.rows] + [r.slot for r in reference.rows]))
    lines: list[TableRow] = []
    for slot in slots:
        mine, theirs = ours.row(slot), reference.row(slot)
        if mine is not None:
            lines.append(_relabel(mine, f"{mine.label} [ours]"))
        if theirs is not None:
            lines.append(_relabel(theirs, f"{theirs.label} [{reference_label}]"))
        if mine is not None and theirs is not None:
            lines.append(TableRow(
                slot=slot,
                label=f"Δ ours − {reference_label}",
                values={key: _delta(mine, theirs, key) for key, _ in ours.columns},
                delta=True,
            ))
    caption = f"Top-1 accuracy (%): ours vs {reference_label}; Δ in percentage points"
    return Table(lines, columns=ours.columns, caption=caption)


def comparison_table(ours: Table, compare: str, per_recipe: str = "best") -> Table:
    label, rows = reference_rows(compare)
    return compare_tables(ours, build_table(rows, per_recipe=per_recipe), reference_label=label)


def _relabel(row: TableRow, label: str) -> TableRow:
    return TableRow(slot=row.slot, label=label, values=row.values, model=row.model)


def _delta(mine: TableRow, theirs: TableRow, key: str) -> float | None:
    a, b = mine.values.get(key), theirs.values.get(key)
    return None if a is None or b is None else 100 * (a - b)
