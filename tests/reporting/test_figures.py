"""Figures are real, non-blank images of a fixed size, in PNG and PDF."""

from __future__ import annotations

import pytest
from PIL import Image

from soup_exp.artifacts.results import read_results
from soup_exp.reporting.figures import (
    DPI,
    FIGSIZE,
    SoupFileError,
    coefficient_matrix,
    greedy_steps,
    plot_figure1,
    plot_greedy_trajectory,
    plot_learned_coefficients,
)
from soup_exp.reporting.paper import reference_dir

from .conftest import assert_no_legend_hides_a_point, make_row

EXPECTED_SIZE = (round(FIGSIZE[0] * DPI), round(FIGSIZE[1] * DPI))


def assert_figure(paths):
    png, pdf = paths[:2]
    assert png.suffix == ".png" and pdf.suffix == ".pdf"
    assert pdf.read_bytes().startswith(b"%PDF") and pdf.stat().st_size > 1000
    with Image.open(png) as image:
        assert image.size == EXPECTED_SIZE
        grey = image.convert("L")
        low, high = grey.getextrema()
        assert low < 50 and high > 200  # ink on paper, not a blank canvas
        assert len(grey.getcolors(maxcolors=256 * 256)) > 10


def test_figure1_from_published_results(tmp_path):
    rows = read_results(reference_dir("paper_vitb32"))
    paths = plot_figure1(rows, tmp_path / "figure1")
    assert_figure(paths)
    import csv

    plotted = list(csv.DictReader(paths[2].open()))
    assert len(plotted) == len(rows) == 75  # every published model, with its coordinates
    greedy = next(r for r in plotted if r["name"] == "greedy_soup")
    assert abs(float(greedy["ImageNet"]) - 0.81026) < 1e-4


def test_figure1_without_plottable_rows_is_skipped(tmp_path):
    with pytest.warns(UserWarning, match="Figure 1 is skipped"):
        assert plot_figure1([{"name": "a", "kind": "lp", "ImageNet": 0.5}], tmp_path / "f") == []
    assert list(tmp_path.iterdir()) == []


def test_greedy_trajectory(tmp_path, greedy_soup_json):
    assert [s.accepted for s in greedy_steps(greedy_soup_json)] == [True, True, False, False]
    assert_figure(plot_greedy_trajectory(greedy_soup_json, tmp_path / "greedy"))


def test_greedy_steps_infer_acceptance_and_reject_bad_history():
    steps = greedy_steps({"history": [{"name": "a", "accuracy": 0.5}, {"name": "b", "accuracy": 0.4},
                                      {"name": "c", "accuracy": 0.6}]})
    assert [s.accepted for s in steps] == [True, False, True]
    with pytest.raises(SoupFileError, match="no held-out accuracy"):
        greedy_steps({"name": "g", "history": [{"ingredient": "a"}]})
    with pytest.raises(SoupFileError, match="no greedy 'history'"):
        greedy_steps({"name": "g"})


def test_learned_coefficients_by_layer_and_per_model(tmp_path, learned_soup_json):
    layers, ingredients, values = coefficient_matrix(learned_soup_json)
    assert len(layers) == 12 and ingredients == ["ft_0", "ft_1", "ft_2"] and len(values[0]) == 3
    assert_figure(plot_learned_coefficients(learned_soup_json, tmp_path / "by_layer"))
    per_model = {"name": "learned", "ingredients": ["a", "b"], "coefficients": [0.3, 0.7]}
    assert_figure(plot_learned_coefficients(per_model, tmp_path / "per_model"))
    with pytest.raises(SoupFileError, match="different lengths"):
        coefficient_matrix({"coefficients": [[0.1, 0.2], [0.3]]})


def _colours(fig):
    from matplotlib.colors import to_hex

    found = set()
    for ax in fig.axes:
        for collection in ax.collections:
            found |= {to_hex(c) for c in collection.get_facecolors()} | {to_hex(c) for c in collection.get_edgecolors()}
        found |= {to_hex(line.get_color()) for line in ax.lines}
    return found


def test_figure1_style_unlabelled_fine_tunes_wise_ft_curve_and_palette(our_rows):
    from matplotlib.colors import to_hex

    from soup_exp.reporting.figures import GREY, PALETTE, figure1

    rows = [{**r, "avg_shifts": 0.5 + 0.01 * i} for i, r in enumerate(our_rows)]
    rows += [{**rows[-1], "name": "wise_ft_0.0", "alpha": 0.0, "ImageNet": 0.6, "avg_shifts": 0.58},
             {**rows[-1], "name": "wise_ft_1.0", "alpha": 1.0, "ImageNet": 0.8, "avg_shifts": 0.55}]
    fig = figure1(rows)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.texts] == []  # the legend names every style; fine-tunes stay unlabelled
    (curve,) = [line for line in ax.lines if line.get_label().startswith("WiSE-FT")]
    xs = list(curve.get_xdata())
    wise = sorted((r for r in rows if r["kind"] == "wise_ft"), key=lambda r: r["alpha"])
    assert xs == [100 * r["ImageNet"] for r in wise] and xs[0] == 60.0 and xs[-1] == 80.0  # alpha 0 -> 1
    assert _colours(fig) <= {to_hex(c) for c in PALETTE.values()} | {GREY.lower(), "#ffffff"}
    labels = {t.get_text() for t in fig.legends[0].get_texts()}
    assert {"Fine-tuned models", "Uniform soup", "Greedy soup", "Ensemble", "Zero-shot", "LP init"} <= labels


def test_figure1_labels_points_the_legend_cannot_tell_apart_without_overlaps():
    from soup_exp.reporting.figures import figure1

    rows = [{"name": f"greedy_seed{i}", "kind": "soup", "recipe": "greedy", "ImageNet": 0.80 + 0.0004 * i,
             "avg_shifts": 0.50 + 0.0003 * (i % 3)} for i in range(8)]
    rows += [{"name": f"ft_{i}", "kind": "finetune", "ImageNet": 0.7 + 0.01 * i, "avg_shifts": 0.45} for i in range(10)]
    fig = figure1(rows)
    ax = fig.axes[0]
    texts = ax.texts
    assert sorted(t.get_text() for t in texts) == sorted(f"greedy_seed{i}" for i in range(8))
    from matplotlib.text import Text

    renderer = fig.canvas.get_renderer()
    for t in texts:
        t.update_positions(renderer)
    boxes = [Text.get_window_extent(t, renderer) for t in texts]  # the words (leader lines may cross)
    frame = ax.get_window_extent(renderer)
    for i, box in enumerate(boxes):
        assert frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
        for other in boxes[i + 1:]:
            assert not box.overlaps(other), (box, other)


def test_every_figure_saves_its_data(tmp_path, greedy_soup_json, learned_soup_json):
    import csv

    paths = plot_greedy_trajectory(greedy_soup_json, tmp_path / "greedy")
    rows = list(csv.DictReader(paths[2].open()))
    assert [r["candidate"] for r in rows] == ["ft_2", "ft_0", "ft_1", "lp"]
    assert [r["accepted"] for r in rows] == ["True", "True", "False", "False"]
    paths = plot_learned_coefficients(learned_soup_json, tmp_path / "learned")
    rows = list(csv.DictReader(paths[2].open()))
    assert len(rows) == 12 and list(rows[0]) == ["row", "ft_0", "ft_1", "ft_2"]


@pytest.fixture
def captured_figures(monkeypatch, tmp_path):
    """The matplotlib Figure each plot function draws, instead of figure files."""
    import soup_exp.reporting.figures as figures

    monkeypatch.chdir(tmp_path)  # the figures' CSVs
    drawn = []
    monkeypatch.setattr(figures, "save_figure", lambda fig, out_base, formats=figures.FORMATS: drawn.append(fig) or [])
    return drawn


def test_greedy_ensemble_trajectory_is_labelled_as_an_ensemble(greedy_soup_json, captured_figures):
    plot_greedy_trajectory({**greedy_soup_json, "name": "greedy_ensemble", "kind": "ensemble"}, "x")
    plot_greedy_trajectory(greedy_soup_json, "y")
    ensemble, soup = captured_figures
    assert [t.get_text() for t in ensemble.legends[0].get_texts()][0] == "Greedy ensemble"
    assert "ensemble with candidate" in ensemble.axes[0].get_ylabel()
    assert [t.get_text() for t in soup.legends[0].get_texts()][0] == "Greedy soup"
    assert all(label.get_fontsize() >= 7 for label in ensemble.axes[0].get_xticklabels())


def test_by_layer_coefficients_label_every_layer_readably_and_explain_beta(captured_figures):
    layers = [f"image_encoder.transformer.resblocks.{i // 4}.{part}" for i, part in
              zip(range(60), ["attn.in_proj_weight", "attn.in_proj_bias", "ln_1.weight", "ln_1.bias"] * 15, strict=True)]
    soup = {"name": "learned_by_layer", "ingredients": ["a", "b", "c"], "beta": 1.39,
            "coefficients": {name: [0.2, 0.3, 0.5] for name in layers + ["head.weight", "head.bias"]}}
    plot_learned_coefficients(soup, "z")
    (fig,) = captured_figures
    ax = fig.axes[0]
    labels = ax.get_yticklabels()
    assert len(labels) == 62 and all(label.get_fontsize() >= 7 for label in labels)
    assert labels[0].get_text() == "0.attn.in_proj_weight" and labels[-1].get_text() == "head.bias"
    assert "image_encoder.transformer.resblocks" in ax.get_ylabel()
    assert fig.get_figheight() >= 0.16 * 62  # the figure grows with the layers, labels do not shrink
    assert "β = 1.39" in ax.get_title() and "temperature" in ax.get_title()


def _user_rows(our_rows):
    """The paper's kinds and recipes, two user recipes, and points spread over the whole plot."""
    rows = [{**r, "avg_shifts": 0.5 + 0.01 * i} for i, r in enumerate(our_rows)]
    rows += [make_row(f"ft_{i + 3}", "finetune", 0.7, ImageNet=0.6 + 0.03 * (i % 10), avg_shifts=0.45 + 0.02 * (i // 10))
             for i in range(60)]
    rows += [make_row("ties", "soup", 0.82, "ties", label="TIES merging", avg_shifts=0.56),
             make_row("dare", "soup", 0.8, "dare", label="DARE", avg_shifts=0.57),
             make_row("learned", "soup", 0.84, "learned_per_model", avg_shifts=0.58),
             make_row("model_stock", "soup", 0.8, "model_stock", avg_shifts=0.5),
             make_row("greedy_ensemble", "ensemble", 0.83, "greedy_ensemble", avg_shifts=0.55)]
    return rows


def test_no_legend_hides_a_plotted_point(our_rows, greedy_soup_json, captured_figures):
    """Figure 1 with points all over the axes, the greedy trajectory and the per-model
    coefficients: each legend lies outside the data (its box vs every point's pixels)."""
    from soup_exp.reporting.figures import figure1

    assert_no_legend_hides_a_point(figure1(_user_rows(our_rows)))
    plot_greedy_trajectory(greedy_soup_json, "greedy")
    plot_learned_coefficients({"name": "learned", "recipe": "learned_per_model", "beta": 1.0,
                               "ingredients": ["a", "b", "c"], "coefficients": [0.9, 0.05, 0.05]}, "learned")
    for fig in captured_figures:
        assert_no_legend_hides_a_point(fig)
    crowded = figure1(_user_rows(our_rows))
    crowded.legends[0].remove()
    crowded.axes[0].legend(loc="best")  # inside the axes, as before: the check sees it
    with pytest.raises(AssertionError, match="covers the points"):
        assert_no_legend_hides_a_point(crowded)


def test_user_recipes_get_styles_no_other_recipe_has(our_rows):
    from matplotlib.colors import to_hex

    from soup_exp.reporting.figures import PALETTE, STYLES, figure1, figure_styles

    rows = _user_rows(our_rows)
    styles = figure_styles(rows)
    assert {"ties", "dare", "wise_ft", "greedy_ensemble", "ensemble"} <= set(styles)
    assert all(styles[key] == STYLES[key] for key in styles if key in STYLES)  # the paper's keep theirs
    pairs = [(s.color, s.marker) for s in styles.values()]
    assert len(set(pairs)) == len(pairs), styles
    assert (styles["ties"].label, styles["dare"].label) == ("TIES merging", "DARE")
    fig = figure1(rows)
    drawn = {c.get_label(): to_hex(c.get_edgecolor()[0]) for c in fig.axes[0].collections}
    assert drawn["TIES merging"] == to_hex(styles["ties"].color) and drawn["DARE"] == to_hex(styles["dare"].color)
    legend = {t.get_text() for t in fig.legends[0].get_texts()}
    assert {"TIES merging", "DARE", "Greedy ensemble", "Ensemble"} <= legend
    # while the palette has a colour no style of the figure uses, a user recipe gets it
    few = figure_styles([r for r in rows if r.get("recipe") in ("wise_ft", "uniform", "ties")])
    assert few["ties"].color not in {PALETTE["orange"], PALETTE["blue"]}
    assert few["ties"].marker not in {STYLES["wise_ft"].marker, STYLES["uniform"].marker}


def test_titles_name_soups_by_their_labels(greedy_soup_json, learned_soup_json, captured_figures):
    plot_learned_coefficients({**learned_soup_json, "beta": 1.04}, "a")
    plot_greedy_trajectory(greedy_soup_json, "b")
    plot_greedy_trajectory({**greedy_soup_json, "name": "greedy_seed2", "label": "Greedy soup"}, "c")
    learned, greedy, seeded = (fig.axes[0].get_title() for fig in captured_figures)
    assert learned.startswith("Learned soup, by layer, β = 1.04") and "learned_by_layer" not in learned
    assert greedy == "Greedy soup: 2 of 4 candidates kept"
    assert seeded == "Greedy soup (greedy_seed2): 2 of 4 candidates kept"
