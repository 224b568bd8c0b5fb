"""Figures of the analysis suite (`soup-exp analyze`): error landscape, angle vs soup gain,
number of ingredients, greedy ablations, calibration.

They share the style of :mod:`soup_exp.reporting.figures` (Okabe-Ito colours, one marker
per model kind, 960 x 720 px PNG + PDF) and, like every figure, save the data they draw as
CSV beside them. Inputs are plain rows, so a user can redraw any of them from the CSV.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from soup_exp.reporting.figures import (
    CYCLE,
    GREY,
    PALETTE,
    SEQUENTIAL_CMAP,
    STYLES,
    annotate_apart,
    figure_styles,
    legend_below,
    new_figure,
    save_data,
    save_figure,
    style_axes,
    style_key,
)
from soup_exp.reporting.table import COLUMNS
from soup_exp.vocabulary import AVG_SHIFTS, HELD_OUT

Row = Mapping[str, Any]
METRIC_LABELS = {**dict(COLUMNS), AVG_SHIFTS: "Avg. shifts", "TrainSubset": "Train subset"}


def metric_label(metric: str) -> str:
    return METRIC_LABELS.get(metric, metric)


def _save(fig: Any, columns: Sequence[str], rows: Sequence[Sequence[Any]], out_base: str | Path) -> list[Path]:
    return [*save_figure(fig, out_base), save_data(columns, rows, out_base)]


def _category_colors(categories: Sequence[str]) -> dict[str, str]:
    """A palette colour per category, in order of first appearance (grey for 'several')."""
    colors: dict[str, str] = {}
    cycle = [PALETTE[c] for c in CYCLE]
    for category in categories:
        if category not in colors:
            colors[category] = GREY if category == "several" else cycle[len(colors) % len(cycle)]
    return colors


# ---- 1. error landscape ----------------------------------------------------------------------


def plot_landscape(grid: Sequence[Row], marked: Sequence[Row], value: str, value_label: str,
                   out_base: str | Path, *, percent: bool = False) -> list[Path]:
    """Filled contours of ``value`` over the plane through three models (``x``, ``y`` in
    weight-space units along an orthonormal basis), with the models and their midpoint
    soup marked at their exact positions. ``grid`` is square and row-major (x varies
    fastest, as :meth:`soup_exp.analysis.landscape.Plane.grid` orders it). ``marked`` rows: ``role`` (origin, model_a,
    model_b, midpoint), ``name``, ``kind``, ``x``, ``y``, ``value``."""
    scale = 100.0 if percent else 1.0
    size = math.isqrt(len(grid))  # row-major: x varies fastest
    xs = [float(r["x"]) for r in grid[:size]]
    ys = [float(r["y"]) for r in grid[::size]]
    z = [[scale * float(r[value]) for r in grid[j * size:(j + 1) * size]] for j in range(size)]
    fig, ax = new_figure()
    filled = ax.contourf(xs, ys, z, levels=14, cmap=SEQUENTIAL_CMAP)
    ax.contour(xs, ys, z, levels=filled.levels, colors="white", linewidths=0.4, alpha=0.6)
    fig.colorbar(filled, ax=ax, label=value_label)
    labelled = []
    for row in marked:
        role = row["role"]
        x, y = float(row["x"]), float(row["y"])
        if role == "origin":
            style = STYLES.get(str(row.get("kind")), STYLES["zeroshot"])
            ax.scatter([x], [y], zorder=4, **{**style.scatter(), "facecolors": "white", "edgecolors": "black"})
        elif role == "midpoint":
            ax.scatter([x], [y], zorder=4, **{**STYLES["uniform"].scatter(), "label": "Midpoint soup",
                                              "facecolors": PALETTE["vermillion"], "edgecolors": "white"})
        else:
            ax.scatter([x], [y], marker="o", s=60, facecolors="white", edgecolors="black", linewidths=1.0,
                       zorder=4, label="Fine-tuned models" if role == "model_a" else None)
            labelled.append((str(row["name"]), x, y))
    ax.set_xlabel("Weight-space distance along the first fine-tuning direction")
    ax.set_ylabel("… along the orthogonal direction")
    ax.set_aspect("equal", adjustable="datalim")
    legend_below(fig, ax)
    annotate_apart(fig, ax, labelled)
    columns = ["role", "name", "x", "y", "w_origin", "w_a", "w_b", value]
    data = [[r.get("role", "grid"), r.get("name", ""), r["x"], r["y"], r.get("w_origin"), r.get("w_a"),
             r.get("w_b"), r[value]] for r in [*marked, *grid]]
    return _save(fig, columns, data, out_base)


# ---- 2. angle vs soup gain ------------------------------------------------------------------------


PAIR_COLUMNS = ("a", "b", "angle_deg", "differs_in", "accuracy_a", "accuracy_b", "soup_accuracy",
                "ensemble_accuracy", "soup_gain", "ensemble_gain")


def _pair_scatter(rows: Sequence[Row], x_key: str, x_label: str, metric: str, out_base: str | Path,
                  diagonal: bool = False) -> list[Path]:
    fig, ax = new_figure()
    colors = _category_colors([str(r["differs_in"]) for r in rows])
    for category, color in colors.items():
        members = [r for r in rows if str(r["differs_in"]) == category]
        ax.scatter([float(r[x_key]) * (1 if x_key == "angle_deg" else 100) for r in members],
                   [100 * float(r["soup_gain"]) for r in members], s=28, color=color, edgecolors="white",
                   linewidths=0.5, label=category, zorder=3)
    ax.axhline(0, color="black", linewidth=0.7, zorder=1)
    if diagonal:
        low, high = ax.get_xlim()
        ax.plot([low, high], [low, high], color="black", linestyle=":", linewidth=0.8, label="soup = ensemble gain")
        ax.set_xlim(low, high)
    ax.set_xlabel(x_label)
    ax.set_ylabel(f"Soup gain over the endpoints' mean, {metric_label(metric)} (pp)")
    style_axes(ax)
    if len(colors) > 1 or diagonal:
        legend_below(fig, ax, ncols=4, title="Pair differs in" if len(colors) > 1 else None, title_fontsize=7)
    return _save(fig, PAIR_COLUMNS, [[r.get(c) for c in PAIR_COLUMNS] for r in rows], out_base)


def plot_soup_gain_vs_angle(rows: Sequence[Row], metric: str, out_base: str | Path) -> list[Path]:
    """Per pair of ingredients: the angle between their fine-tuning directions (x) and the
    gain of their 50/50 soup over the mean of the two (y), coloured by what the pair differs in."""
    return _pair_scatter(rows, "angle_deg", "Angle between fine-tuning directions (degrees)", metric, out_base)


def plot_soup_vs_ensemble_gain(rows: Sequence[Row], metric: str, out_base: str | Path) -> list[Path]:
    """Per pair: the gain of the logit ensemble (x) against the gain of the soup (y)."""
    return _pair_scatter(rows, "ensemble_gain", f"Ensemble gain over the endpoints' mean, {metric_label(metric)} (pp)",
                         metric, out_base, diagonal=True)


# ---- 3. number of ingredients ------------------------------------------------------------------------


def plot_num_ingredients(random_rows: Sequence[Row], greedy_rows: Sequence[Row], best: Row,
                         metrics: Sequence[str], out_base: str | Path) -> list[Path]:
    """Per metric (a panel each): uniform soups of k random ingredients (mean and one standard
    deviation over draws, each draw a faint point), the greedy soup as it grows, and the
    best individual model as a horizontal line."""
    fig, axes = new_figure(1, len(metrics), sharex=True)
    axes = list(axes) if len(metrics) > 1 else [axes]
    color = STYLES["uniform"].color
    greedy = STYLES["greedy"]
    for ax, metric in zip(axes, metrics, strict=True):
        ks = sorted({int(r["k"]) for r in random_rows})
        values = {k: [100 * float(r[metric]) for r in random_rows if int(r["k"]) == k] for k in ks}
        means = [sum(v) / len(v) for v in values.values()]
        spread = [_std(v) for v in values.values()]
        ax.scatter([k for k in ks for _ in values[k]], [y for k in ks for y in values[k]], s=8, color=color,
                   alpha=0.35, linewidths=0, zorder=2)
        ax.fill_between(ks, [m - s for m, s in zip(means, spread, strict=True)],
                        [m + s for m, s in zip(means, spread, strict=True)], color=color, alpha=0.15, linewidth=0)
        ax.plot(ks, means, color=color, marker="o", markersize=3.5, linewidth=1.4,
                label="Uniform soup of k random ingredients")
        if greedy_rows:
            ax.plot([int(r["k"]) for r in greedy_rows], [100 * float(r[metric]) for r in greedy_rows],
                    linewidth=1.2, linestyle="--", label="Greedy soup, growing", **greedy.line())
        ax.axhline(100 * float(best[metric]), color=GREY, linestyle=":", linewidth=1.2,
                   label=f"Best individual ({best['name']})")
        ax.set_title(metric_label(metric), fontsize=9)
        ax.set_xlabel("Number of ingredients k")
        style_axes(ax)
    axes[0].set_ylabel("Accuracy (%)")
    legend_below(fig, axes[0], ncols=2)
    columns = ["series", "k", "draw", *metrics, "ingredients"]
    data = [[r["series"], r["k"], r.get("draw"), *(r[m] for m in metrics), " ".join(r["ingredients"])]
            for r in [*random_rows, *greedy_rows, best]]
    return _save(fig, columns, data, out_base)


def _std(values: Sequence[float]) -> float:
    if len(values) < 2:
        return 0.0
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


# ---- 4. greedy ablations ------------------------------------------------------------------------------


GREEDY_COLUMNS = ("run", "order", "tolerance", "size", "held_out")


def plot_greedy_orders(runs: Sequence[Row], metrics: Sequence[str], out_base: str | Path) -> list[Path]:
    """Greedy soups from random candidate orders beside the sorted (paper's) order: final
    accuracy on held-out and ``metrics`` (left, one column each, a dot per order) and soup
    size (right, counts)."""
    random_runs = [r for r in runs if r["order"] == "random"]
    sorted_run = next(r for r in runs if r["order"] == "sorted" and float(r["tolerance"]) == 0)
    shown = ["held_out", *metrics]
    fig, (left, right) = new_figure(1, 2, width_ratios=[max(2, len(shown)), 2])
    greedy = STYLES["greedy"]
    for column, metric in enumerate(shown):
        values = [100 * float(r[metric]) for r in random_runs]
        offsets = _jitter(len(values))
        left.scatter([column + o for o in offsets], values, s=18, color=GREY, linewidths=0, zorder=2,
                     label="Random order" if column == 0 else None)
        left.scatter([column], [100 * float(sorted_run[metric])], zorder=3,
                     **{**greedy.scatter(), "label": "Sorted by held-out (paper)" if column == 0 else None})
    left.set_xticks(range(len(shown)), [metric_label(HELD_OUT if m == "held_out" else m) for m in shown])
    left.set_xlim(-0.6, len(shown) - 0.4)
    left.set_ylabel("Accuracy of the final greedy soup (%)")
    style_axes(left)
    sizes = sorted({int(r["size"]) for r in random_runs} | {int(sorted_run["size"])})
    counts = [sum(int(r["size"]) == s for r in random_runs) for s in sizes]
    right.bar(sizes, counts, color=GREY, width=0.7, label="Random order")
    right.axvline(int(sorted_run["size"]), color=greedy.color, linewidth=2, label="Sorted order")
    right.set_xticks(sizes)
    right.set_xlabel("Ingredients kept")
    right.set_ylabel("Random orders")
    style_axes(right)
    legend_below(fig, left, ncols=2)
    columns = [*GREEDY_COLUMNS, *metrics, "chosen"]
    return _save(fig, columns, [[r.get(c) for c in GREEDY_COLUMNS] + [r[m] for m in metrics] + [" ".join(r["chosen"])]
                                for r in runs], out_base)


def _jitter(n: int, width: float = 0.25) -> list[float]:
    """Deterministic, evenly spread horizontal offsets for a strip of ``n`` dots."""
    if n <= 1:
        return [0.0] * n
    return [-width + 2 * width * i / (n - 1) for i in range(n)]


def plot_greedy_tolerance(runs: Sequence[Row], metrics: Sequence[str], out_base: str | Path) -> list[Path]:
    """The sorted-order greedy soup as the tolerance grows: accuracies (top) and soup size
    (bottom) against the tolerance."""
    chosen = sorted((r for r in runs if r["order"] == "sorted"), key=lambda r: float(r["tolerance"]))
    fig, (top, bottom) = new_figure(2, 1, sharex=True, height_ratios=[3, 1])
    tolerances = [100 * float(r["tolerance"]) for r in chosen]
    for index, metric in enumerate(["held_out", *metrics]):
        color = PALETTE[CYCLE[index % len(CYCLE)]]
        top.plot(tolerances, [100 * float(r[metric]) for r in chosen], marker="os^Dv"[index % 5], color=color,
                 markersize=4, linewidth=1.2, label=metric_label(HELD_OUT if metric == "held_out" else metric))
    top.set_ylabel("Accuracy of the greedy soup (%)")
    legend_below(fig, top, ncols=4)
    style_axes(top)
    bottom.bar(tolerances, [int(r["size"]) for r in chosen], width=_bar_width(tolerances), color=GREY)
    bottom.set_ylabel("Kept")
    bottom.set_xlabel("Tolerance: required held-out improvement (pp)")
    style_axes(bottom)
    columns = [*GREEDY_COLUMNS, *metrics, "chosen"]
    return _save(fig, columns, [[r.get(c) for c in GREEDY_COLUMNS] + [r[m] for m in metrics] + [" ".join(r["chosen"])]
                                for r in chosen], out_base)


def _bar_width(xs: Sequence[float]) -> float:
    gaps = [b - a for a, b in zip(xs, xs[1:], strict=False) if b > a]
    return 0.6 * min(gaps) if gaps else 0.6


# ---- 5. calibration ---------------------------------------------------------------------------------


ECE_COLUMNS = ("model", "kind", "recipe", "dataset", "ece", "accuracy", "confidence")


def plot_ece(rows: Sequence[Row], datasets: Sequence[str], out_base: str | Path, *,
             columns: Sequence[str] = ECE_COLUMNS, ylabel: str = "Expected calibration error (%)") -> list[Path]:
    """Expected calibration error per dataset: individual fine-tunes as grey dots, the
    other models in their Figure 1 style, slightly apart so that they do not hide each other.
    Rows with ``ece_scaled`` (after temperature scaling) get a second panel under the first,
    on the same scale. ``columns``: those of the CSV."""
    scaled = any(r.get("ece_scaled") is not None for r in rows)
    fig, axes = new_figure(2 if scaled else 1, 1, sharex=True, sharey=True, squeeze=False)
    panels = [(axes[0][0], "ece", "As predicted")]
    if scaled:
        panels.append((axes[1][0], "ece_scaled", "Temperature-scaled (T fitted on held-out)"))
    for ax, value, title in panels:
        _ece_panel(ax, rows, datasets, value)
        if scaled:
            ax.set_title(title, fontsize=8)
            ax.set_ylabel(ylabel, fontsize=8)
        else:
            ax.set_ylabel(ylabel)
    ax = panels[-1][0]
    ax.set_xticks(range(len(datasets)), [metric_label(d) for d in datasets])
    ax.set_ylim(bottom=0)
    legend_below(fig, panels[0][0])
    return _save(fig, columns, [[r.get(c) for c in columns] for r in rows], out_base)


def _ece_panel(ax: Any, rows: Sequence[Row], datasets: Sequence[str], value: str) -> None:
    groups: dict[str, list[Row]] = {}
    for row in rows:
        groups.setdefault(style_key(row), []).append(row)
    styles = figure_styles(rows)
    marked = [k for k in styles if k != "finetune"]
    for key, style in styles.items():
        offset = 0.0 if key == "finetune" else -0.3 + 0.6 * (marked.index(key) + 0.5) / max(1, len(marked))
        by_model: dict[str, list[Row]] = {}
        for row in groups[key]:
            by_model.setdefault(str(row["model"]), []).append(row)
        for index, model_rows in enumerate(by_model.values()):
            xs = [datasets.index(r["dataset"]) + offset for r in model_rows]
            kwargs = style.scatter()
            if index:
                kwargs["label"] = None
            ax.scatter(xs, [100 * float(r[value]) for r in model_rows], zorder=2 if key == "finetune" else 3, **kwargs)
    style_axes(ax)


RELIABILITY_COLUMNS = ("model", "kind", "recipe", "dataset", "binning", "bin_low", "bin_high", "count", "confidence", "accuracy")


def plot_reliability(curves: Sequence[Row], datasets: Sequence[str], out_base: str | Path) -> list[Path]:
    """Reliability diagrams, one panel per dataset: accuracy against mean confidence per
    confidence bin (bins with images only), the diagonal being perfect calibration."""
    ncols = min(3, len(datasets))
    nrows = math.ceil(len(datasets) / ncols)
    fig, axes = new_figure(nrows, ncols, sharex=True, sharey=True)
    flat = list(axes.flat) if hasattr(axes, "flat") else [axes]
    models: dict[str, Row] = {}
    for curve in curves:
        models.setdefault(str(curve["model"]), curve)
    styles = figure_styles(models.values())
    for ax, dataset in zip(flat, datasets, strict=False):
        ax.plot([0, 100], [0, 100], color="black", linestyle=":", linewidth=0.8)
        for name, first in models.items():
            points = [c for c in curves if c["model"] == name and c["dataset"] == dataset and int(c["count"]) > 0]
            style = styles[style_key(first)]
            label = style.label if style_key(first) != "finetune" else f"{name} (best individual)"
            ax.plot([100 * float(p["confidence"]) for p in points], [100 * float(p["accuracy"]) for p in points],
                    linewidth=1.0, label=label, **{**style.line(), "markersize": 3.5})
        ax.set_title(metric_label(dataset), fontsize=8)
        ax.set_xlim(0, 100)
        ax.set_ylim(0, 100)
        ax.tick_params(labelsize=7)
        style_axes(ax)
    for ax in flat[len(datasets):]:
        ax.set_visible(False)
    for ax in flat[(nrows - 1) * ncols:]:
        ax.set_xlabel("Confidence (%)", fontsize=8)
    fig.supylabel("Accuracy (%)", fontsize=9)
    legend_below(fig, flat[0])
    return _save(fig, RELIABILITY_COLUMNS, [[c.get(k) for k in RELIABILITY_COLUMNS] for c in curves], out_base)


# ---- 6. held-out optimism ---------------------------------------------------------------------------------


OPTIMISM_STYLES = {"greedy": "greedy", "learned": "learned_per_model"}


def plot_optimism(summary: Sequence[Row], metrics: Sequence[str], out_base: str | Path) -> list[Path]:
    """Cross-fitted selection against the held-out images per class: each method's gain over
    the best individual in sample (dashed), on the left-out folds (solid) and on the first
    metric (dotted), left; the optimism gap, in-sample minus out-of-sample gain (one standard
    deviation over folds as bars), right."""
    fig, (left, right) = new_figure(1, 2)
    first = metrics[0] if metrics else None
    for method in dict.fromkeys(str(r["method"]) for r in summary):
        rows = sorted((r for r in summary if r["method"] == method), key=lambda r: int(r["images_per_class"]))
        style = STYLES[OPTIMISM_STYLES.get(method, "greedy")]
        sizes = [int(r["images_per_class"]) for r in rows]
        left.plot(sizes, [100 * float(r["in_sample_gain"]) for r in rows], linestyle="--", linewidth=1.2,
                  label=f"{style.label}: held-out, in sample", **style.line())
        left.plot(sizes, [100 * float(r["cross_fitted_gain"]) for r in rows], linestyle="-", linewidth=1.4,
                  label=f"{style.label}: held-out, cross-fitted", **style.line())
        if first is not None:
            left.plot(sizes, [100 * float(r[f"cross_fitted_{first}_gain"]) for r in rows], linestyle=":",
                      linewidth=1.2, label=f"{style.label}: {metric_label(first)}", **style.line())
        right.errorbar(sizes, [100 * float(r["gap"]) for r in rows], yerr=[100 * float(r["gap_sd"]) for r in rows],
                       capsize=3, linewidth=1.4, label=style.label, **style.line())
    for ax in (left, right):
        ax.axhline(0.0, color=GREY, linewidth=0.8)
        ax.set_xscale("log")
        ticks = sorted({int(r["images_per_class"]) for r in summary})
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel("Held-out images per class")
        style_axes(ax)
    left.set_ylabel("Gain over the best individual (pp)")
    right.set_ylabel("Optimism gap: in-sample minus cross-fitted gain (pp)")
    legend_below(fig, left, ncols=2)
    columns = list(summary[0]) if summary else ["method", "images_per_class"]
    return _save(fig, columns, [[r.get(c) for c in columns] for r in summary], out_base)
