"""The paper's table: the published numbers reproduce, selection is on held-out, formats render."""

from __future__ import annotations

import csv
import io

import pytest

from soup_exp.artifacts.results import read_results
from soup_exp.errors import ConfigError
from soup_exp.reporting.paper import reference_dir
from soup_exp.reporting.table import build_table, render, to_latex, to_markdown


def _cells(table, slot):
    row = table.row(slot)
    return {key: table.cell(row, key) for key in ("ImageNet", "avg_shifts")}


def test_published_vitb32_files_reproduce_the_papers_table():
    table = build_table(read_results(reference_dir("paper_vitb32")))
    assert table.row("best_individual").model == "model_43"
    assert _cells(table, "best_individual") == {"ImageNet": "80.39", "avg_shifts": "47.97"}
    assert _cells(table, "uniform") == {"ImageNet": "79.97", "avg_shifts": "51.58"}
    assert _cells(table, "greedy") == {"ImageNet": "81.03", "avg_shifts": "50.86"}
    assert _cells(table, "ensemble") == {"ImageNet": "81.19", "avg_shifts": "50.88"}
    assert _cells(table, "lp_init") == {"ImageNet": "75.57", "avg_shifts": "47.15"}
    assert [r.slot for r in table.rows] == ["lp_init", "best_individual", "uniform", "greedy", "ensemble"]
    markdown = to_markdown(table)
    assert "| Best individual on held-out (model_43) | 83.05 | 80.39 |" in markdown


def test_rows_selection_labels_and_omissions(our_rows):
    table = build_table(our_rows)
    slots = [r.slot for r in table.rows]
    assert slots == ["zeroshot", "lp_init", "best_individual", "uniform", "greedy",
                     "learned_by_layer", "ensemble", "wise_ft"]
    assert table.row("best_individual").model == "ft_2"  # by held-out, not ImageNet (ft_1)
    assert table.row("greedy").label == "Greedy soup (2 models)"
    assert table.row("uniform").label == "Uniform soup (4 models)"
    assert table.row("wise_ft").label == "WiSE-FT (α=0.50, ft_2)"
    assert table.cell(table.row("zeroshot"), "ImageNet2p") == "60.00"
    all_wise = build_table(our_rows, per_recipe="all")
    assert [r.model for r in all_wise.rows if r.slot == "wise_ft"] == ["wise_ft_0.3", "wise_ft_0.5"]
    with pytest.raises(ConfigError):
        build_table(our_rows, per_recipe="worst")


def test_formats(our_rows):
    table = build_table(our_rows)
    latex = to_latex(table)
    assert "\\toprule" in latex and "\\midrule" in latex and "\\bottomrule" in latex
    assert "$\\alpha$=0.50, ft\\_2" in latex
    assert latex.count("\\\\") == len(table.rows) + 1
    parsed = list(csv.DictReader(io.StringIO(render(table, "csv"))))
    assert len(parsed) == len(table.rows)
    assert parsed[4]["method"] == "Greedy soup (2 models)" and parsed[4]["ImageNet"] == "82.00"
    markdown = render(table, "md").splitlines()
    assert markdown[1].startswith("| --- | ---: |")
    assert all(line.startswith("| ") for line in markdown[: len(table.rows) + 2])
    assert markdown[len(table.rows) + 3:] == [f"- {note}" for note in table.notes]
    with pytest.raises(ConfigError, match="unknown table format"):
        render(table, "xlsx")


def test_missing_values_and_unscored_candidates(our_rows):
    rows = [dict(r) for r in our_rows if r["kind"] == "finetune"]
    for r in rows:
        r.pop("ImageNet2p")
    rows.append({"name": "lone_soup", "kind": "soup", "recipe": "model_stock", "ImageNet": 0.5})
    with pytest.warns(UserWarning, match="none has a held-out accuracy"):
        table = build_table(rows)
    assert [r.slot for r in table.rows] == ["model_stock"]  # a single candidate needs no choosing
    assert "| Model Stock | – | 50.00 | – |" in to_markdown(table)


def test_findings_state_the_headline_comparisons_in_points():
    rows = [
        {"name": "zs", "kind": "zeroshot", "ImageNet2p": 0.50, "ImageNet": 0.40, "avg_shifts": 0.30},
        {"name": "ft_1", "kind": "finetune", "ImageNet2p": 0.80, "ImageNet": 0.70, "avg_shifts": 0.40},
        {"name": "greedy", "kind": "soup", "recipe": "greedy", "ImageNet2p": 0.82, "ImageNet": 0.71,
         "avg_shifts": 0.45},
    ]
    notes = build_table(rows).notes
    assert notes == [
        "Best individual on held-out (ft_1) vs Zero-shot: held-out +30.00, ImageNet +30.00, Avg shifts +10.00 points",
        "Greedy soup vs Best individual on held-out (ft_1): held-out +2.00, ImageNet +1.00, Avg shifts +5.00 points",
    ]
