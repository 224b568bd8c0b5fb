"""Published numbers to compare a run against, and the side-by-side comparison table.

The authors' ViT-B/32 result files ship inside the package (``reference/``) because
users' machines do not have the project's shared folder. ``compare`` is a registry name
(``paper_vitb32``) or a path to any other results (a previous run, another model).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from soup_exp.artifacts.results import normalise_row, read_results, row_class_space
from soup_exp.errors import ConfigError
from soup_exp.reporting.table import Table, TableRow, build_table
from soup_exp.vocabulary import AVG_SHIFTS, IMAGENET

# Published result files shipped in soup_exp/reference/<dir>.
log = logging.getLogger(__name__)

PUBLISHED: dict[str, str] = {"paper_vitb32": "model-soups-vitb32"}
# The class space each published set was measured on (ImageNet-1k's indices).
PUBLISHED_CLASSES: dict[str, range] = {"paper_vitb32": range(1000)}

# Numbers given only in the paper's text (Table 1 of arXiv 2203.05482), not in the files.
PAPER_TEXT_ROWS: dict[str, list[dict[str, Any]]] = {
    "paper_vitb32": [
        {"name": "learned_soup", "kind": "soup", "recipe": "learned_per_model",
         "label": "Learned soup (paper text)", IMAGENET: 0.8089, AVG_SHIFTS: 0.5107},
        {"name": "learned_soup_by_layer", "kind": "soup", "recipe": "learned_by_layer",
         "label": "Learned soup, by layer (paper text)", IMAGENET: 0.8137, AVG_SHIFTS: 0.5087},
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


def results_rows(results: Any) -> list[dict[str, Any]]:
    """Rows of ``results``: results files or directories (as :func:`read_results` takes
    them) and names of published sets (``paper_vitb32``), alone or in a list."""
    entries = [results] if isinstance(results, str | os.PathLike) or results is None else list(results)
    named = [str(e) for e in entries if is_published_name(e)]
    paths = [e for e in entries if not is_published_name(e)]
    rows = read_results(paths) if paths or not named else []
    return rows + [row for name in named for row in published_rows(name)]


def is_published_name(entry: Any) -> bool:
    """A published set's name, unless a file or folder of that name exists here."""
    return isinstance(entry, str) and entry in PUBLISHED and not Path(entry).exists()


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


def comparison_table(ours: Table, compare: str, per_recipe: str = "best",
                     our_rows: Sequence[dict[str, Any]] = ()) -> Table:
    """``ours`` beside the ``compare`` set; a warning (also in the caption) when the two
    were measured on different class spaces, where their differences mean little."""
    label, rows = reference_rows(compare)
    table = compare_tables(ours, build_table(rows, per_recipe=per_recipe), reference_label=label)
    note = class_space_note(our_rows, rows, label, PUBLISHED_CLASSES.get(compare))
    if note:
        log.warning("compare=%s: %s", compare, note)
        table.notes.insert(0, f"Warning: {note}.")
    return table


def class_space_note(ours: Sequence[dict[str, Any]], theirs: Sequence[dict[str, Any]], label: str,
                     their_classes: range | None = None) -> str | None:
    """Why the comparison is between different tasks, or None when the class spaces match
    (or cannot be told)."""
    from soup_exp.data.classes import ClassSpace

    mine = _class_spaces(ours)
    other = ([ClassSpace(tuple(their_classes)).identity()] if their_classes is not None
             else _class_spaces(theirs))
    if not mine or not other or mine == other:
        return None
    return (f"our results are on {_describe(mine)}, {label}'s on {_describe(other)}: accuracies over "
            "different class spaces are different tasks, so the differences are not a like-for-like "
            "comparison (compare a run on the same data.classes instead)")


def _class_spaces(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    spaces = [row_class_space(row) for row in rows]
    return sorted({tuple(sorted(s.items())): s for s in spaces if s}.values(), key=lambda s: s["count"])


def _describe(spaces: list[dict[str, Any]]) -> str:
    counts = sorted({s["count"] for s in spaces})
    return " and ".join(f"{n} class{'es' if n != 1 else ''}" for n in counts)


def _relabel(row: TableRow, label: str) -> TableRow:
    return TableRow(slot=row.slot, label=label, values=row.values, model=row.model)


def _delta(mine: TableRow, theirs: TableRow, key: str) -> float | None:
    a, b = mine.values.get(key), theirs.values.get(key)
    return None if a is None or b is None else 100 * (a - b)
