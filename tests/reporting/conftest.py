"""Result rows and soup.json files shaped like what the soup and evaluate stages write."""

from __future__ import annotations

import pytest

KEYS = ("ImageNet2p", "ImageNet", "ImageNetV2", "ImageNetSketch", "ImageNetR", "ObjectNet", "ImageNetA")


def make_row(name, kind, base, recipe=None, **extra):
    row = {"name": name, "kind": kind, **{k: round(base - 0.01 * i, 4) for i, k in enumerate(KEYS)}}
    if recipe:
        row["recipe"] = recipe
    return {**row, **extra}


@pytest.fixture
def our_rows():
    return [
        make_row("zeroshot", "zeroshot", 0.60),
        make_row("lp", "lp", 0.70),
        make_row("ft_0", "finetune", 0.75),
        make_row("ft_1", "finetune", 0.74, ImageNet=0.90),  # best on ImageNet, not on held-out
        make_row("ft_2", "finetune", 0.80),
        make_row("uniform", "soup", 0.81, "uniform", num_ingredients=4),
        make_row("greedy", "soup", 0.83, "greedy", num_ingredients=2),
        make_row("learned_by_layer", "soup", 0.84, "learned_by_layer"),
        make_row("ensemble", "ensemble", 0.82, "ensemble", num_ingredients=4),
        make_row("wise_ft_0.3", "wise_ft", 0.78, "wise_ft", alpha=0.3, interpolated="ft_2"),
        make_row("wise_ft_0.5", "wise_ft", 0.79, "wise_ft", alpha=0.5, interpolated="ft_2"),
    ]


@pytest.fixture
def greedy_soup_json():
    return {
        "name": "greedy", "recipe": "greedy", "kind": "soup",
        "ingredients": ["ft_2", "ft_0"],
        "history": [
            {"ingredient": "ft_2", "held_out": 0.80, "accepted": True},
            {"ingredient": "ft_0", "held_out": 0.83, "accepted": True},
            {"ingredient": "ft_1", "held_out": 0.82, "accepted": False},
            {"ingredient": "lp", "held_out": 0.79, "accepted": False},
        ],
    }


@pytest.fixture
def learned_soup_json():
    return {
        "name": "learned_by_layer", "recipe": "learned_by_layer", "kind": "soup",
        "ingredients": ["ft_0", "ft_1", "ft_2"], "beta": 1.7,
        "coefficients": {f"image_encoder.layer{i}.weight": [0.2, 0.3 + 0.01 * i, 0.5 - 0.01 * i] for i in range(12)},
    }


def plotted_points(fig):
    """Display coordinates of every point drawn in ``fig``'s axes: scatter offsets, line
    vertices and bar tops (what a legend must not cover)."""
    import numpy as np
    from matplotlib.patches import Rectangle

    points = []
    for ax in fig.axes:
        for collection in ax.collections:
            offsets = np.asarray(collection.get_offsets())
            if offsets.size and collection.get_array() is None:  # markers, not a colour map
                points += list(collection.get_offset_transform().transform(offsets))
        for line in ax.lines:
            xy = np.column_stack([line.get_xdata(), line.get_ydata()]).astype(float)
            points += list(line.get_transform().transform(xy))
        for patch in ax.patches:
            if isinstance(patch, Rectangle):
                points.append(ax.transData.transform((patch.get_x() + patch.get_width() / 2,
                                                      patch.get_y() + patch.get_height())))
    return points


def assert_no_legend_hides_a_point(fig):
    """No legend of ``fig`` (its own or an axes') covers a plotted point, nor the marker
    around it (a few pixels)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig.draw_without_rendering()
    renderer = FigureCanvasAgg(fig).get_renderer()
    legends = [*fig.legends, *(ax.get_legend() for ax in fig.axes if ax.get_legend() is not None)]
    assert legends, "no legend drawn"
    points = plotted_points(fig)
    assert points
    for legend in legends:
        box = legend.get_window_extent(renderer).padded(4)
        hidden = [(round(x), round(y)) for x, y in points if box.contains(x, y)]
        assert not hidden, f"the legend {box} covers the points {hidden[:5]}"
