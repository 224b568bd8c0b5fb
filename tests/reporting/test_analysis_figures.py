"""The analysis figures keep the report's style: Okabe-Ito colours for every marker and
line, labels that overlap nothing, legends that hide no point, and the data drawn saved
beside each figure."""

from __future__ import annotations

import csv

import pytest
from matplotlib.colors import to_hex
from matplotlib.contour import ContourSet
from matplotlib.text import Text

from soup_exp.reporting import analysis_figures as figures
from soup_exp.reporting.figures import GREY, PALETTE

from .conftest import assert_no_legend_hides_a_point

ALLOWED = {c.lower() for c in PALETTE.values()} | {GREY.lower(), "#ffffff"}
SHIFTS = ["ImageNet", "ImageNetV2", "ImageNetSketch", "ImageNetR", "ObjectNet", "ImageNetA"]


@pytest.fixture
def drawn(monkeypatch, tmp_path):
    """The Figure each plot function draws (figure files are skipped, CSVs are written)."""
    captured = []
    monkeypatch.setattr(figures, "save_figure", lambda fig, out_base, formats=None: captured.append(fig) or [])
    monkeypatch.chdir(tmp_path)
    return captured


def _colours(fig):
    found = set()
    for ax in fig.axes:
        for collection in ax.collections:
            if isinstance(collection, ContourSet) or collection.get_array() is not None:
                continue  # the landscape's map and its colour bar: cividis, not categories
            found |= {to_hex(c) for c in collection.get_facecolors()} | {to_hex(c) for c in collection.get_edgecolors()}
        for line in ax.lines:
            found |= {to_hex(line.get_color()), to_hex(line.get_markerfacecolor()), to_hex(line.get_markeredgecolor())}
    return found


def _landscape_rows(b=(0.9, 0.35)):
    grid = [{"role": "grid", "x": -0.2 + 0.7 * i, "y": -0.2 + 0.4 * j, "error": 0.1 * (i + j)}
            for j in range(3) for i in range(3)]
    marked = [{"role": "origin", "name": "lp_init", "kind": "lp", "x": 0.0, "y": 0.0, "error": 0.3},
              {"role": "model_a", "name": "finetune_long_name_a", "kind": "finetune", "x": 1.0, "y": 0.0, "error": 0.2},
              {"role": "model_b", "name": "finetune_long_name_b", "kind": "finetune", "x": b[0], "y": b[1],
               "error": 0.25},
              {"role": "midpoint", "name": "midpoint soup", "kind": None, "x": (1 + b[0]) / 2, "y": b[1] / 2,
               "error": 0.15}]
    return grid, marked


def test_every_analysis_figure_draws_in_the_okabe_ito_palette_with_legends_outside_the_data(drawn):
    pairs = [{"a": f"ft_{i}", "b": f"ft_{i + 1}", "angle_deg": 10.0 * i, "differs_in": ["lr", "wd", "several"][i % 3],
              "accuracy_a": 0.7, "accuracy_b": 0.72, "soup_accuracy": 0.73, "ensemble_accuracy": 0.74,
              "soup_gain": 0.02, "ensemble_gain": 0.03} for i in range(6)]
    figures.plot_soup_gain_vs_angle(pairs, "ImageNet", "angles")
    figures.plot_soup_vs_ensemble_gain(pairs, "ImageNet", "gains")
    random_rows = [{"series": "random", "k": k, "draw": d, "ingredients": ["a"] * k, "ImageNet": 0.7 + 0.01 * k + 0.001 * d,
                    "avg_shifts": 0.5} for k in (1, 2, 4) for d in range(3)]
    greedy_rows = [{"series": "greedy", "k": k, "draw": None, "ingredients": ["a"] * k, "ImageNet": 0.75,
                    "avg_shifts": 0.52} for k in (1, 2)]
    best = {"series": "best_individual", "k": 1, "draw": None, "ingredients": ["a"], "ImageNet": 0.74,
            "avg_shifts": 0.5, "name": "a"}
    figures.plot_num_ingredients(random_rows, greedy_rows, best, ["ImageNet", "avg_shifts"], "k")
    runs = [{"run": f"tolerance_{t:g}", "order": "sorted", "tolerance": t, "size": 3 - i, "held_out": 0.8,
             "chosen": ["a"], "ImageNet": 0.7} for i, t in enumerate((0.0, 0.01))]
    runs += [{"run": f"random_{i}", "order": "random", "tolerance": 0.0, "size": 1 + i % 2, "held_out": 0.78,
              "chosen": ["b"], "ImageNet": 0.69} for i in range(4)]
    figures.plot_greedy_orders(runs, ["ImageNet"], "orders")
    figures.plot_greedy_tolerance(runs, ["ImageNet"], "tolerance")
    models = [("zeroshot", "zeroshot", ""), ("lp_init", "lp", ""), ("ft_0", "finetune", ""), ("ft_1", "finetune", ""),
              ("uniform", "soup", "uniform"), ("greedy", "soup", "greedy"), ("ensemble", "ensemble", "ensemble")]
    rows = [{"model": m, "kind": k, "recipe": r, "label": m, "dataset": d, "ece": 0.05, "accuracy": 0.7,
             "confidence": 0.75} for m, k, r in models for d in SHIFTS]
    figures.plot_ece(rows, SHIFTS, "ece")
    curves = [{"model": m, "kind": k, "recipe": r, "label": m, "dataset": d, "bin_low": b / 5, "bin_high": (b + 1) / 5,
               "count": 3, "confidence": b / 5 + 0.1, "accuracy": b / 5} for m, k, r in models if m != "ft_1"
              for d in SHIFTS for b in range(5)]
    figures.plot_reliability(curves, SHIFTS, "reliability")
    figures.plot_landscape(*_landscape_rows(), "error", "Held-out error (%)", "landscape", percent=True)
    assert len(drawn) == 8
    for fig in drawn:
        assert _colours(fig) <= ALLOWED, fig.axes[0].get_xlabel()
        assert_no_legend_hides_a_point(fig)


def test_landscape_labels_of_nearby_models_do_not_overlap_and_its_data_is_saved(drawn):
    grid, marked = _landscape_rows(b=(0.97, 0.04))  # the two fine-tunes almost on top of each other
    paths = figures.plot_landscape(grid, marked, "error", "Held-out error (%)", "landscape", percent=True)
    (fig,) = drawn
    ax = fig.axes[0]
    assert sorted(t.get_text() for t in ax.texts) == ["finetune_long_name_a", "finetune_long_name_b"]
    renderer = fig.canvas.get_renderer()
    boxes = [Text.get_window_extent(t, renderer) for t in ax.texts]
    assert not boxes[0].overlaps(boxes[1])
    frame = ax.get_window_extent(renderer)
    assert all(frame.x0 <= b.x0 and b.x1 <= frame.x1 and frame.y0 <= b.y0 and b.y1 <= frame.y1 for b in boxes)
    (csv_path,) = paths
    rows = list(csv.DictReader(csv_path.open()))
    assert [r["role"] for r in rows[:4]] == ["origin", "model_a", "model_b", "midpoint"] and len(rows) == 13
    assert float(rows[1]["error"]) == 0.2
