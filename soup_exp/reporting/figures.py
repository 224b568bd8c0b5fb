"""The paper's figures: Figure 1 (ImageNet vs distribution shifts), the greedy-soup
trajectory, learned-soup coefficients. Each is saved as PNG and PDF.

Figures are drawn on ``matplotlib.figure.Figure`` objects directly (Agg rendering, no
pyplot state), so reports work on headless nodes and inside notebooks alike. Styles
differ by marker shape and fill, not only colour, so printouts in greyscale stay legible.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from soup_exp.errors import SoupExpError
from soup_exp.utils.io import atomic_path

FIGSIZE = (6.4, 4.8)
DPI = 150  # PNGs are 960 x 720 pixels; a by-layer coefficient map grows taller with its layers
FORMATS = ("png", "pdf")
LABEL_FONT = 7  # points: tick labels naming models and layers

# Figure 1 marker per style key (see _style_key): shape and fill tell them apart in grey.
STYLES: dict[str, dict[str, Any]] = {
    "finetune": {"marker": "o", "s": 22, "facecolors": "0.7", "edgecolors": "0.35", "label": "Fine-tuned models"},
    "lp": {"marker": "v", "s": 70, "facecolors": "white", "edgecolors": "black", "label": "LP init"},
    "zeroshot": {"marker": "P", "s": 80, "facecolors": "white", "edgecolors": "black", "label": "Zero-shot"},
    "uniform": {"marker": "*", "s": 220, "facecolors": "black", "edgecolors": "black", "label": "Uniform soup"},
    "greedy": {"marker": "D", "s": 80, "facecolors": "black", "edgecolors": "black", "label": "Greedy soup"},
    "learned_per_model": {"marker": "^", "s": 90, "facecolors": "0.3", "edgecolors": "black", "label": "Learned soup"},
    "learned_by_layer": {"marker": ">", "s": 90, "facecolors": "0.3", "edgecolors": "black", "label": "Learned soup (by layer)"},
    "model_stock": {"marker": "X", "s": 90, "facecolors": "0.5", "edgecolors": "black", "label": "Model stock"},
    "ensemble": {"marker": "s", "s": 80, "facecolors": "white", "edgecolors": "black", "label": "Ensemble"},
    "greedy_ensemble": {"marker": "s", "s": 80, "facecolors": "0.55", "edgecolors": "black", "label": "Greedy ensemble"},
    "wise_ft": {"marker": "p", "s": 80, "facecolors": "0.85", "edgecolors": "black", "label": "WiSE-FT"},
}


class SoupFileError(SoupExpError, ValueError):
    """A soup.json whose history or coefficients cannot be read."""


def save_figure(fig: Figure, out_base: str | Path, formats: Sequence[str] = FORMATS) -> list[Path]:
    """Write ``out_base.<fmt>`` for each format, atomically; returns the paths."""
    out_base = Path(out_base)
    paths = []
    for fmt in formats:
        path = out_base.with_name(f"{out_base.name}.{fmt}")
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=fmt, dpi=DPI)
        paths.append(path)
    return paths


def save_data(columns: Sequence[str], rows: Sequence[Sequence[Any]], out_base: str | Path) -> Path:
    """A figure's data as ``out_base.csv`` beside it, so users can restyle it."""
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(rows)
    path = Path(out_base).with_name(f"{Path(out_base).name}.csv")
    with atomic_path(path) as tmp:
        tmp.write_text(buffer.getvalue(), encoding="utf-8")
    return path


def plot_figure1(rows: Sequence[Mapping[str, Any]], out_base: str | Path) -> list[Path]:
    """ImageNet top-1 (x) against the mean over the five shifts (y), as in the paper's
    Figure 1: fine-tuned models as grey points, soups/ensembles/baselines marked and named."""
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        if row.get("ImageNet") is None or row.get("avg_shifts") is None:
            continue
        groups.setdefault(_style_key(row), []).append(row)
    if not groups:
        warnings.warn("no result has both ImageNet and avg_shifts; Figure 1 is skipped", stacklevel=2)
        return []
    fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    labelled: list[tuple[str, float, float]] = []
    for key in sorted(groups, key=lambda k: list(STYLES).index(k) if k in STYLES else len(STYLES)):
        members = groups[key]
        style = dict(STYLES.get(key) or _new_style(key, members[0]))
        xs = [100 * float(r["ImageNet"]) for r in members]
        ys = [100 * float(r["avg_shifts"]) for r in members]
        ax.scatter(xs, ys, linewidths=0.8, zorder=3 if key != "finetune" else 2, **style)
        if key != "finetune":
            labelled += [(str(r["name"]), x, y) for r, x, y in zip(members, xs, ys, strict=True)]
    ax.margins(x=0.1, y=0.06)
    _annotate_apart(fig, ax, labelled)
    ax.set_xlabel("ImageNet top-1 accuracy (%)")
    ax.set_ylabel("Avg. accuracy on 5 distribution shifts (%)")
    ax.grid(True, color="0.9", linewidth=0.6, zorder=0)
    ax.legend(fontsize=7, loc="best", frameon=True)
    data = [[r["name"], r.get("kind"), r.get("recipe"), r.get("label"), r["ImageNet"], r["avg_shifts"]]
            for members in groups.values() for r in members]
    return [*save_figure(fig, out_base),
            save_data(["name", "kind", "recipe", "label", "ImageNet", "avg_shifts"], data, out_base)]


@dataclass(frozen=True)
class GreedyStep:
    candidate: str
    held_out: float
    accepted: bool


_NAME_KEYS = ("ingredient", "candidate", "name", "model")
_ACCURACY_KEYS = ("held_out", "held_out_accuracy", "soup_held_out", "accuracy", "score", "acc")
_ACCEPT_KEYS = ("accepted", "added", "kept", "improved")


def greedy_steps(soup: Mapping[str, Any]) -> list[GreedyStep]:
    """The greedy history of a soup.json: per candidate, the held-out accuracy of the soup
    with it added and whether it was kept. Entries without an accept flag are judged by
    the rule of the reference code (kept when held-out accuracy strictly improves)."""
    history = soup.get("history")
    if not isinstance(history, list) or not history:
        raise SoupFileError(f"soup {soup.get('name', '?')!r}: soup.json has no greedy 'history' list")
    steps, best = [], -math.inf
    for index, entry in enumerate(history):
        if not isinstance(entry, Mapping):
            raise SoupFileError(f"soup {soup.get('name', '?')!r}: history[{index}] is not an object: {entry!r}")
        accuracy = _first(entry, _ACCURACY_KEYS)
        if accuracy is None:
            raise SoupFileError(
                f"soup {soup.get('name', '?')!r}: history[{index}] has no held-out accuracy "
                f"(expected one of {', '.join(_ACCURACY_KEYS)}): {dict(entry)}"
            )
        accepted = _first(entry, _ACCEPT_KEYS)
        accepted = bool(accepted) if accepted is not None else float(accuracy) > best
        if accepted:
            best = max(best, float(accuracy))
        name = _first(entry, _NAME_KEYS)
        steps.append(GreedyStep(str(name if name is not None else index), float(accuracy), accepted))
    return steps


def plot_greedy_trajectory(soup: Mapping[str, Any], out_base: str | Path) -> list[Path]:
    """Held-out accuracy after trying each candidate (in held-out order), kept ones
    filled, rejected ones hollow, with the running soup accuracy as a step line."""
    steps = greedy_steps(soup)
    xs = list(range(1, len(steps) + 1))
    ys = [100 * s.held_out for s in steps]
    running, best = [], -math.inf
    for step, y in zip(steps, ys, strict=True):
        best = max(best, y) if step.accepted else best
        running.append(best if best > -math.inf else y)
    what = "ensemble" if soup.get("kind") == "ensemble" else "soup"
    fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    ax.step(xs, running, where="post", color="black", linestyle="--", linewidth=1.0, label=f"Greedy {what}")
    kept = [(x, y) for x, y, s in zip(xs, ys, steps, strict=True) if s.accepted]
    dropped = [(x, y) for x, y, s in zip(xs, ys, steps, strict=True) if not s.accepted]
    if kept:
        ax.scatter(*zip(*kept, strict=True), marker="o", s=36, color="black", zorder=3, label="Added")
    if dropped:
        ax.scatter(*zip(*dropped, strict=True), marker="o", s=36, facecolors="white", edgecolors="0.3", zorder=3, label="Rejected")
    if len(steps) <= 30:
        ax.set_xticks(xs, [s.candidate for s in steps], rotation=60, ha="right", fontsize=LABEL_FONT)
    ax.set_xlabel("Candidate (sorted by individual held-out accuracy)")
    ax.set_ylabel(f"Held-out accuracy of {what} with candidate (%)")
    ax.set_title(f"{soup.get('name', f'greedy {what}')}: {len(kept)} of {len(steps)} candidates kept", fontsize=9)
    ax.grid(True, color="0.9", linewidth=0.6, zorder=0)
    ax.legend(fontsize=7)
    return save_figure(fig, out_base)


def coefficient_matrix(soup: Mapping[str, Any]) -> tuple[list[str], list[str], list[list[float]]]:
    """``(row labels, ingredient names, values)`` of a soup.json's ``coefficients``: one
    row for per-model mixing weights, one row per layer for by-layer soups."""
    coefficients = soup.get("coefficients")
    ingredients = [str(n) for n in soup.get("ingredients") or []]
    where = f"soup {soup.get('name', '?')!r}"
    if isinstance(coefficients, Mapping) and coefficients and all(_is_number(v) for v in coefficients.values()):
        return ["mixing weight"], [str(k) for k in coefficients], [[float(v) for v in coefficients.values()]]
    if isinstance(coefficients, Mapping) and coefficients:
        rows = [str(k) for k in coefficients]
        values = [_numbers(v, where) for v in coefficients.values()]
    elif isinstance(coefficients, list) and coefficients and all(_is_number(v) for v in coefficients):
        rows, values = ["mixing weight"], [[float(v) for v in coefficients]]
    elif isinstance(coefficients, list) and coefficients:
        values = [_numbers(v, where) for v in coefficients]
        rows = [f"layer {i}" for i in range(len(values))]
    else:
        raise SoupFileError(f"{where}: soup.json has no 'coefficients' (a list, or a mapping of layer -> list)")
    width = len(values[0])
    if any(len(v) != width for v in values):
        raise SoupFileError(f"{where}: coefficient rows have different lengths")
    if len(ingredients) != width:
        ingredients = [f"ingredient {i}" for i in range(width)]
    return rows, ingredients, values


LAYER_ROW_INCHES = 0.16  # one readable label (LABEL_FONT points) per layer row
BETA_NOTE = "β: the learned temperature multiplying the logits (starts at 1)"


def plot_learned_coefficients(soup: Mapping[str, Any], out_base: str | Path) -> list[Path]:
    """Per-model soups: a bar per ingredient. By-layer soups: a layers x ingredients
    heatmap in grey levels with a colour bar, every layer labelled (the figure grows with
    the number of layers rather than shrinking or skipping labels)."""
    rows, ingredients, values = coefficient_matrix(soup)
    by_layer = len(rows) > 1
    height = max(FIGSIZE[1], 1.8 + LAYER_ROW_INCHES * len(rows)) if by_layer else FIGSIZE[1]
    fig = Figure(figsize=(FIGSIZE[0], height), dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    title = str(soup.get("name", "learned soup"))
    if soup.get("beta") is not None:
        title += f" (β = {float(soup['beta']):.3g})\n{BETA_NOTE}"
    if not by_layer:
        xs = range(len(ingredients))
        ax.bar(xs, values[0], color="0.45", edgecolor="black", linewidth=0.6)
        ax.set_xticks(list(xs), ingredients, rotation=60, ha="right", fontsize=LABEL_FONT)
        ax.set_ylabel("Mixing coefficient")
        ax.axhline(1 / len(ingredients), color="black", linestyle=":", linewidth=0.8, label="uniform")
        ax.legend(fontsize=LABEL_FONT)
    else:
        image = ax.imshow(values, aspect="auto", cmap="Greys", interpolation="nearest")
        fig.colorbar(image, ax=ax, label="Mixing coefficient", shrink=min(1.0, 6 / height))
        ax.set_xticks(range(len(ingredients)), ingredients, rotation=60, ha="right", fontsize=LABEL_FONT)
        prefix, labels = short_layer_names(rows)
        ax.set_yticks(range(len(rows)), labels, fontsize=LABEL_FONT)
        ax.set_ylabel(f"Parameter tensor{f' (prefix {prefix}. not shown)' if prefix else ''}")
    ax.set_xlabel("Ingredient")
    ax.set_title(title, fontsize=9)
    return save_figure(fig, out_base)


_LABEL_OFFSETS = ((5, 4), (5, -11), (-5, 4), (-5, -11), (5, 14), (-5, -21), (5, -21), (-5, 14))


def _annotate_apart(fig: Figure, ax: Any, points: Sequence[tuple[str, float, float]]) -> None:
    """Name each point, trying a few offsets so labels of nearby points do not overlap."""
    renderer = FigureCanvasAgg(fig).get_renderer()
    placed: list[Any] = []
    for text, x, y in points:
        for dx, dy in _LABEL_OFFSETS:
            label = ax.annotate(
                text, (x, y), xytext=(dx, dy), textcoords="offset points", fontsize=7,
                ha="left" if dx > 0 else "right",
            )
            box = label.get_window_extent(renderer)
            if not any(box.overlaps(other) for other in placed):
                break
            label.remove()
        else:
            label = ax.annotate(text, (x, y), xytext=(5, 4), textcoords="offset points", fontsize=7)
            box = label.get_window_extent(renderer)
        placed.append(box)


def short_layer_names(names: list[str]) -> tuple[str, list[str]]:
    """``(prefix, names)``: the dotted prefix most layer names share
    (``image_encoder.transformer.resblocks``) and the names without it, so the labels fit
    beside the heatmap; names outside it stay whole."""
    parts = [n.split(".") for n in names]
    prefix: list[str] = []
    while True:
        depth = len(prefix)
        heads = [p[depth] for p in parts if len(p) > depth + 1 and p[:depth] == prefix]
        if not heads:
            break
        head = max(set(heads), key=heads.count)
        if heads.count(head) * 2 <= len(names):
            break
        prefix.append(head)
    width = len(prefix)
    return ".".join(prefix), [".".join(p[width:]) if p[:width] == prefix and len(p) > width else n
                              for p, n in zip(parts, names, strict=True)]


def _style_key(row: Mapping[str, Any]) -> str:
    kind = str(row.get("kind", "finetune"))
    if kind in ("soup", "ensemble"):
        return str(row.get("recipe") or kind)
    return kind


_EXTRA_MARKERS = ("h", "8", "d", "<", "H", "p")


def _new_style(key: str, row: Mapping[str, Any]) -> dict[str, Any]:
    """A marker for a recipe Figure 1 has no style for (a user's), labelled as the table does."""
    marker = _EXTRA_MARKERS[sum(map(ord, key)) % len(_EXTRA_MARKERS)]
    return {"marker": marker, "s": 70, "facecolors": "0.5", "edgecolors": "black",
            "label": str(row.get("label") or key)}


def _first(entry: Mapping[str, Any], keys: Sequence[str]) -> Any:
    return next((entry[k] for k in keys if entry.get(k) is not None), None)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _numbers(value: Any, where: str) -> list[float]:
    if not isinstance(value, list) or not all(_is_number(v) for v in value):
        raise SoupFileError(f"{where}: expected a list of numbers per coefficient row, got {value!r}")
    return [float(v) for v in value]
