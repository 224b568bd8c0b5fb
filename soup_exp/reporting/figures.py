"""The paper's figures: Figure 1 (ImageNet vs distribution shifts), the greedy-soup
trajectory, learned-soup coefficients; and the shared style of every figure soup-exp draws.

Figures are drawn on ``matplotlib.figure.Figure`` objects directly (Agg rendering, no
pyplot state), so reports work on headless nodes and inside notebooks alike. Each is saved
as PNG and PDF with its data as CSV beside it (:func:`save_data`), so users can restyle it.
Colours are the Okabe-Ito palette (distinguishable with every common colour-vision
deficiency) and styles also differ by marker shape and fill, so greyscale printouts stay
legible. Every recipe in a figure has a (colour, marker) of its own: the paper's keep
theirs, a user's gets one no other style in that figure has (:func:`figure_styles`).
Legends sit outside the axes, so they never hide a point, and titles name soups by their
label. Points are labelled only where the legend cannot say what they are.
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.text import Text
from matplotlib.transforms import Bbox

from soup_exp.artifacts.models import SoupRecord
from soup_exp.errors import SoupExpError
from soup_exp.utils.io import atomic_path
from soup_exp.vocabulary import AVG_SHIFTS, IMAGENET

FIGSIZE = (6.4, 4.8)
DPI = 150  # PNGs are 960 x 720 pixels; a by-layer coefficient map grows taller with its layers
FORMATS = ("png", "pdf")
LABEL_FONT = 7  # points: tick labels naming models and layers

# Okabe & Ito (2008), "Color universal design": safe for deuteranopia, protanopia, tritanopia.
PALETTE = {
    "black": "#000000", "orange": "#E69F00", "sky_blue": "#56B4E9", "green": "#009E73",
    "yellow": "#F0E442", "blue": "#0072B2", "vermillion": "#D55E00", "purple": "#CC79A7",
}
GREY = "#999999"  # individual fine-tunes: many points, in the background
CYCLE = ("blue", "vermillion", "green", "orange", "purple", "sky_blue", "black")
SEQUENTIAL_CMAP = "cividis"  # perceptually uniform and colour-vision-deficiency safe


@dataclass(frozen=True)
class Style:
    """How one kind of model is drawn in every figure: colour, marker, fill, size, legend label."""

    label: str
    color: str
    marker: str
    filled: bool = True
    size: float = 70

    def scatter(self) -> dict[str, Any]:
        return {"marker": self.marker, "s": self.size, "label": self.label, "linewidths": 0.9,
                "facecolors": self.color if self.filled else "white", "edgecolors": self.color}

    def line(self) -> dict[str, Any]:
        return {"color": self.color, "marker": self.marker, "markersize": math.sqrt(self.size) * 0.8,
                "markerfacecolor": self.color if self.filled else "white", "markeredgecolor": self.color}


# Per style key (see style_key): the model kinds and the paper's recipes.
STYLES: dict[str, Style] = {
    "finetune": Style("Fine-tuned models", GREY, "o", size=18),
    "lp": Style("LP init", PALETTE["black"], "v", filled=False),
    "zeroshot": Style("Zero-shot", PALETTE["black"], "P", size=80),
    "uniform": Style("Uniform soup", PALETTE["blue"], "*", size=200),
    "greedy": Style("Greedy soup", PALETTE["vermillion"], "D", size=70),
    "learned_per_model": Style("Learned soup", PALETTE["green"], "^", size=80),
    "learned_by_layer": Style("Learned soup (by layer)", PALETTE["green"], ">", filled=False, size=80),
    "model_stock": Style("Model stock", PALETTE["purple"], "X", size=80),
    "ensemble": Style("Ensemble", PALETTE["sky_blue"], "s", size=70),
    "greedy_ensemble": Style("Greedy ensemble", PALETTE["sky_blue"], "p", filled=False, size=80),
    "wise_ft": Style("WiSE-FT", PALETTE["orange"], "o", size=14),
}
# Markers for users' recipes, first choices first (then those the paper's styles use).
_EXTRA_MARKERS = ("h", "8", "d", "<", "H", "s", "^", "D", "v", "X", "P", "*", ">", "o", "p")


def style_key(row: Mapping[str, Any]) -> str:
    """The style of a result row or soup: its recipe for soups and ensembles, else its kind."""
    kind = str(row.get("kind") or "finetune")
    if kind in ("soup", "ensemble"):
        return str(row.get("recipe") or kind)
    return kind


def figure_styles(rows: Iterable[Mapping[str, Any]]) -> dict[str, Style]:
    """The style of each style key among ``rows``, in legend order (the paper's first). The
    paper's kinds and recipes keep theirs; any other recipe (a user's) is named by its label
    and gets a marker no other style of this figure has, in a colour none has while the
    palette has one left, so no two recipes of a figure look alike."""
    first: dict[str, Mapping[str, Any]] = {}
    for row in rows:
        first.setdefault(style_key(row), row)
    keys = sorted(first, key=style_order)
    styles = {key: STYLES[key] for key in keys if key in STYLES}
    for key in keys:
        if key not in STYLES:
            styles[key] = _unused_style(recipe_display_name(first[key]), list(styles.values()))
    return {key: styles[key] for key in keys}


def _unused_style(label: str, taken: Sequence[Style]) -> Style:
    colours, markers = Counter(s.color for s in taken), Counter(s.marker for s in taken)
    pairs = {(s.color, s.marker) for s in taken}
    free = [(c, m) for m in _EXTRA_MARKERS for c in (PALETTE[name] for name in CYCLE) if (c, m) not in pairs]
    colour, marker = min(free, key=lambda p: (markers[p[1]] > 0, colours[p[0]] > 0, colours[p[0]]))
    return Style(label, colour, marker)


def style_order(key: str) -> int:
    return list(STYLES).index(key) if key in STYLES else len(STYLES)


def recipe_display_name(row: Mapping[str, Any]) -> str:
    """How a row or soup.json's recipe is named to people: its ``label`` (from the recipe's
    YAML), else the packaged recipe's, else the recipe or the model's name."""
    from soup_exp.reporting.table import recipe_label

    recipe = row.get("recipe")
    return str(row.get("label") or (recipe_label(str(recipe)) if recipe else None) or recipe or row.get("name") or "soup")


def soup_title(soup: SoupRecord | Mapping[str, Any]) -> str:
    """A soup's label, with its name when that is not just the recipe's (two greedy soups)."""
    soup = as_soup(soup)
    label = recipe_display_name({"name": soup.name, "recipe": soup.recipe, "label": soup.label})
    return label if not soup.name or soup.name in (soup.recipe, label) else f"{label} ({soup.name})"


def as_soup(soup: SoupRecord | Mapping[str, Any]) -> SoupRecord:
    """A soup's typed record; a ``soup.json`` object read elsewhere is read into one."""
    return soup if isinstance(soup, SoupRecord) else SoupRecord.of(soup, Path("."))


def legend_below(fig: Figure, ax: Any, ncols: int = 3, **kwargs: Any) -> None:
    """``ax``'s legend under the axes (a constrained layout makes room), so it hides no data."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncols=min(ncols, len(handles)), fontsize=7,
                   frameon=False, **kwargs)


def new_figure(nrows: int = 1, ncols: int = 1, **kwargs: Any) -> tuple[Figure, Any]:
    """A figure of the standard size (960 x 720 px) with its axes (one, a row or a grid,
    as ``Figure.subplots`` returns them)."""
    fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    axes = fig.subplots(nrows, ncols, **kwargs)
    return fig, axes


def style_axes(ax: Any) -> None:
    ax.grid(True, color="0.9", linewidth=0.6, zorder=0)
    ax.set_axisbelow(True)


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
    Figure 1: fine-tuned models as unlabelled grey points, WiSE-FT as a curve through its
    alphas, soups, ensembles and baselines marked and named by the legend."""
    plotted = [r for r in rows if r.get(IMAGENET) is not None and r.get(AVG_SHIFTS) is not None]
    if not plotted:
        warnings.warn(f"no result has both {IMAGENET} and {AVG_SHIFTS}; Figure 1 is skipped", stacklevel=2)
        return []
    fig = figure1(plotted)
    data = [[r["name"], r.get("kind"), r.get("recipe"), r.get("label"), r.get("alpha"), r.get("interpolated"),
             r[IMAGENET], r[AVG_SHIFTS]] for r in plotted]
    columns = ["name", "kind", "recipe", "label", "alpha", "interpolated", IMAGENET, AVG_SHIFTS]
    return [*save_figure(fig, out_base), save_data(columns, data, out_base)]


def figure1(rows: Sequence[Mapping[str, Any]]) -> Figure:
    """The Figure 1 canvas for rows that all have ``ImageNet`` and ``avg_shifts``."""
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        groups.setdefault(style_key(row), []).append(row)
    fig, ax = new_figure()
    labelled: list[tuple[str, float, float]] = []
    for key, style in figure_styles(rows).items():
        members = groups[key]
        if key == "wise_ft":
            _wise_ft_curves(ax, members, style)
            continue
        xs = [100 * float(r[IMAGENET]) for r in members]
        ys = [100 * float(r[AVG_SHIFTS]) for r in members]
        ax.scatter(xs, ys, zorder=3 if key != "finetune" else 2, **style.scatter())
        if key != "finetune" and len(members) > 1:  # the legend names the style, not which one
            labelled += [(str(r["name"]), x, y) for r, x, y in zip(members, xs, ys, strict=True)]
    ax.margins(x=0.08, y=0.08)
    ax.set_xlabel("ImageNet top-1 accuracy (%)")
    ax.set_ylabel("Avg. accuracy on 5 distribution shifts (%)")
    style_axes(ax)
    legend_below(fig, ax)
    annotate_apart(fig, ax, labelled)
    return fig


def _wise_ft_curves(ax: Any, rows: Sequence[Mapping[str, Any]], style: Style) -> None:
    """One line per interpolated model through its alphas (zero-shot end to fine-tuned end)."""
    curves: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        curves.setdefault(str(row.get("interpolated") or "?"), []).append(row)
    dashes = ("-", "--", ":", "-.")
    for index, (of, members) in enumerate(sorted(curves.items())):
        members = sorted(members, key=lambda r: float(r.get("alpha") if r.get("alpha") is not None else math.inf))
        xs = [100 * float(r[IMAGENET]) for r in members]
        ys = [100 * float(r[AVG_SHIFTS]) for r in members]
        ax.plot(xs, ys, linestyle=dashes[index % len(dashes)], linewidth=1.2, zorder=2.5,
                label=f"{style.label} of {of} (α = 0 … 1)", **style.line())


@dataclass(frozen=True)
class GreedyStep:
    candidate: str
    held_out: float
    accepted: bool


_NAME_KEYS = ("ingredient", "candidate", "name", "model")
_ACCURACY_KEYS = ("held_out", "held_out_accuracy", "soup_held_out", "accuracy", "score", "acc")
_ACCEPT_KEYS = ("accepted", "added", "kept", "improved")


def greedy_steps(soup: SoupRecord | Mapping[str, Any]) -> list[GreedyStep]:
    """The greedy history of a soup.json: per candidate, the held-out accuracy of the soup
    with it added and whether it was kept. Entries without an accept flag are judged by
    the rule of the reference code (kept when held-out accuracy strictly improves)."""
    soup = as_soup(soup)
    history, where = soup.history, f"soup {soup.name or '?'!r}"
    if not isinstance(history, tuple) or not history:
        raise SoupFileError(f"{where}: soup.json has no greedy 'history' list")
    steps, best = [], -math.inf
    for index, entry in enumerate(history):
        if not isinstance(entry, Mapping):
            raise SoupFileError(f"{where}: history[{index}] is not an object: {entry!r}")
        accuracy = _first(entry, _ACCURACY_KEYS)
        if accuracy is None:
            raise SoupFileError(
                f"{where}: history[{index}] has no held-out accuracy "
                f"(expected one of {', '.join(_ACCURACY_KEYS)}): {dict(entry)}"
            )
        accepted = _first(entry, _ACCEPT_KEYS)
        accepted = bool(accepted) if accepted is not None else float(accuracy) > best
        if accepted:
            best = max(best, float(accuracy))
        name = _first(entry, _NAME_KEYS)
        steps.append(GreedyStep(str(name if name is not None else index), float(accuracy), accepted))
    return steps


def plot_greedy_trajectory(soup: SoupRecord | Mapping[str, Any], out_base: str | Path) -> list[Path]:
    """Held-out accuracy after trying each candidate (in held-out order), kept ones
    filled, rejected ones hollow, with the running soup accuracy as a step line."""
    soup = as_soup(soup)
    steps = greedy_steps(soup)
    xs = list(range(1, len(steps) + 1))
    ys = [100 * s.held_out for s in steps]
    running, best = [], -math.inf
    for step, y in zip(steps, ys, strict=True):
        best = max(best, y) if step.accepted else best
        running.append(best if best > -math.inf else y)
    what = "ensemble" if soup.kind == "ensemble" else "soup"
    fig, ax = new_figure()
    color = STYLES["greedy_ensemble" if what == "ensemble" else "greedy"].color
    ax.step(xs, running, where="post", color=color, linestyle="--", linewidth=1.0, label=f"Greedy {what}")
    kept = [(x, y) for x, y, s in zip(xs, ys, steps, strict=True) if s.accepted]
    dropped = [(x, y) for x, y, s in zip(xs, ys, steps, strict=True) if not s.accepted]
    if kept:
        ax.scatter(*zip(*kept, strict=True), marker="o", s=36, color=color, zorder=3, label="Added")
    if dropped:
        ax.scatter(*zip(*dropped, strict=True), marker="o", s=36, facecolors="white", edgecolors=GREY,
                   linewidths=1.0, zorder=3, label="Rejected")
    if len(steps) <= 30:
        ax.set_xticks(xs, [s.candidate for s in steps], rotation=60, ha="right", fontsize=LABEL_FONT)
    ax.set_xlabel("Candidate (sorted by individual held-out accuracy)")
    ax.set_ylabel(f"Held-out accuracy of {what} with candidate (%)")
    ax.set_title(f"{soup_title(soup)}: {len(kept)} of {len(steps)} candidates kept", fontsize=9)
    style_axes(ax)
    legend_below(fig, ax)
    data = [[x, s.candidate, s.held_out, s.accepted, r / 100] for x, s, r in zip(xs, steps, running, strict=True)]
    return [*save_figure(fig, out_base),
            save_data(["step", "candidate", "held_out", "accepted", "soup_held_out"], data, out_base)]


def coefficient_matrix(soup: SoupRecord | Mapping[str, Any]) -> tuple[list[str], list[str], list[list[float]]]:
    """``(row labels, ingredient names, values)`` of a soup.json's ``coefficients``: one
    row for per-model mixing weights, one row per layer for by-layer soups."""
    soup = as_soup(soup)
    coefficients, ingredients = soup.coefficients, list(soup.ingredients)
    where = f"soup {soup.name or '?'!r}"
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


def plot_learned_coefficients(soup: SoupRecord | Mapping[str, Any], out_base: str | Path) -> list[Path]:
    """Per-model soups: a bar per ingredient. By-layer soups: a layers x ingredients
    heatmap (a colour-vision-safe sequential map) with a colour bar, every layer labelled
    (the figure grows with the number of layers rather than shrinking or skipping labels)."""
    soup = as_soup(soup)
    rows, ingredients, values = coefficient_matrix(soup)
    by_layer = len(rows) > 1
    height = max(FIGSIZE[1], 1.8 + LAYER_ROW_INCHES * len(rows)) if by_layer else FIGSIZE[1]
    fig = Figure(figsize=(FIGSIZE[0], height), dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    title = soup_title(soup)
    if soup.beta is not None:
        title += f", β = {float(soup.beta):.3g}\n{BETA_NOTE}"
    if not by_layer:
        xs = range(len(ingredients))
        ax.bar(xs, values[0], color=STYLES["learned_per_model"].color, edgecolor="black", linewidth=0.6)
        ax.set_xticks(list(xs), ingredients, rotation=60, ha="right", fontsize=LABEL_FONT)
        ax.set_ylabel("Mixing coefficient")
        ax.axhline(1 / len(ingredients), color="black", linestyle=":", linewidth=0.8, label="Uniform weights")
        legend_below(fig, ax)
    else:
        image = ax.imshow(values, aspect="auto", cmap=SEQUENTIAL_CMAP, interpolation="nearest")
        fig.colorbar(image, ax=ax, label="Mixing coefficient", shrink=min(1.0, 6 / height))
        ax.set_xticks(range(len(ingredients)), ingredients, rotation=60, ha="right", fontsize=LABEL_FONT)
        prefix, labels = short_layer_names(rows)
        ax.set_yticks(range(len(rows)), labels, fontsize=LABEL_FONT)
        ax.set_ylabel(f"Parameter tensor{f' (prefix {prefix}. not shown)' if prefix else ''}")
    ax.set_xlabel("Ingredient")
    ax.set_title(title, fontsize=9)
    data = [[row, *vals] for row, vals in zip(rows, values, strict=True)]
    return [*save_figure(fig, out_base), save_data(["row", *ingredients], data, out_base)]


# Label offsets (points) tried in turn: beside the point, then stacked above and below it
# on either side, so a tight cluster gets a column of labels with leader lines.
_OFFSETS = tuple((dx, dy) for dy in (4, -10, *(s * k for k in range(14, 90, 10) for s in (1, -1)))
                 for dx in (6, -6))
_LEADER_FROM = 12  # points: farther labels get a thin line to their point


def annotate_apart(fig: Figure, ax: Any, points: Sequence[tuple[str, float, float]], fontsize: float = 7) -> None:
    """Name each point where its label overlaps no other label and no labelled marker and
    stays inside the axes (the first free offset of ``_OFFSETS``; if none is free, the one
    overlapping least). Call once the axes are complete: the layout is fixed first, so the
    positions measured here are the final ones."""
    if not points:
        return
    fig.draw_without_rendering()
    renderer = FigureCanvasAgg(fig).get_renderer()
    frame = ax.get_window_extent(renderer)
    markers = []
    for _, x, y in points:
        px, py = ax.transData.transform((x, y))
        markers.append(Bbox.from_extents(px - 4, py - 4, px + 4, py + 4))
    placed: list[Bbox] = []
    for index, (text, x, y) in enumerate(points):
        obstacles = placed + [m for i, m in enumerate(markers) if i != index]
        best = None
        for dx, dy in _OFFSETS:
            leader = {"arrowprops": {"arrowstyle": "-", "color": GREY, "linewidth": 0.5, "shrinkA": 0, "shrinkB": 3}} \
                if abs(dy) > _LEADER_FROM else {}
            label = ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points", fontsize=fontsize,
                                ha="left" if dx > 0 else "right", va="center", **leader)
            label.set_in_layout(False)
            label.update_positions(renderer)
            box = Text.get_window_extent(label, renderer)  # the words, not the leader line
            cost = sum(_overlap(box, other) for other in obstacles) + (0 if _inside(box, frame) else 1e6)
            if best is None or cost < best[0]:
                if best is not None:
                    best[1].remove()
                best = (cost, label, box)
            else:
                label.remove()
            if cost == 0:
                break
        placed.append(best[2])


def _overlap(a: Bbox, b: Bbox) -> float:
    width = min(a.x1, b.x1) - max(a.x0, b.x0)
    height = min(a.y1, b.y1) - max(a.y0, b.y0)
    return width * height if width > 0 and height > 0 else 0.0


def _inside(box: Bbox, frame: Bbox) -> bool:
    return box.x0 >= frame.x0 and box.x1 <= frame.x1 and box.y0 >= frame.y0 and box.y1 <= frame.y1


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


def _first(entry: Mapping[str, Any], keys: Sequence[str]) -> Any:
    return next((entry[k] for k in keys if entry.get(k) is not None), None)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _numbers(value: Any, where: str) -> list[float]:
    if not isinstance(value, list) or not all(_is_number(v) for v in value):
        raise SoupFileError(f"{where}: expected a list of numbers per coefficient row, got {value!r}")
    return [float(v) for v in value]
