"""Side-by-side comparison with the published ViT-B/32 numbers."""

from __future__ import annotations

import pytest

from soup_exp.artifacts.results import ResultsStore
from soup_exp.errors import ConfigError
from soup_exp.reporting.paper import comparison_table, published_rows
from soup_exp.reporting.table import build_table


def test_comparison_puts_ours_beside_the_paper_with_deltas(our_rows):
    table = comparison_table(build_table(our_rows), "paper_vitb32")
    labels = [r.label for r in table.rows]
    assert "Greedy soup (2 models) [ours]" in labels and "Greedy soup [paper]" in labels
    greedy = [r for r in table.rows if r.slot == "greedy"]
    assert [r.delta for r in greedy] == [False, False, True]
    # ours 0.82 ImageNet vs the paper's 0.81026
    assert table.cell(greedy[2], "ImageNet") == "+0.97"
    zeroshot = [r for r in table.rows if r.slot == "zeroshot"]
    assert len(zeroshot) == 1  # the paper's files have no zero-shot row: no delta line
    learned = [r for r in table.rows if r.slot == "learned_per_model"]
    assert learned[0].label == "Learned soup (paper text) [paper]" and table.cell(learned[0], "ImageNet") == "80.89"


def test_compare_with_another_results_file(tmp_path, our_rows):
    store = ResultsStore(tmp_path / "baseline.jsonl")
    for row in our_rows:
        store.upsert({**row, "ImageNet": row["ImageNet"] - 0.01})
    table = comparison_table(build_table(our_rows), str(store.path))
    delta = [r for r in table.rows if r.delta and r.slot == "uniform"][0]
    assert table.cell(delta, "ImageNet") == "+1.00"
    assert "Uniform soup (4 models) [baseline]" in [r.label for r in table.rows]


def test_unknown_compare_is_a_config_error():
    with pytest.raises(ConfigError, match="neither a published result set"):
        comparison_table(build_table([]), "paper_vit_huge")


def test_published_rows_include_the_paper_text_numbers():
    names = {r["name"] for r in published_rows("paper_vitb32")}
    assert {"model_43", "greedy_soup", "learned_soup", "learned_soup_by_layer"} <= names


def test_reproduction_check_puts_each_import_beside_its_published_numbers():
    from soup_exp.reporting.reproduction import reproduction_table

    published = {"ImageNet2p": 0.80, "ImageNet": 0.75, "ImageNetV2": 0.6, "ImageNetSketch": 0.4,
                 "ImageNetR": 0.5, "ObjectNet": 0.3, "ImageNetA": 0.2}
    rows = [{"name": "model_0", "kind": "lp", **published, "ImageNet": 0.7512, "published": published},
            {"name": "uniform", "kind": "soup", "recipe": "uniform", "ImageNet": 0.80}]
    table = reproduction_table(rows, published_rows("paper_vitb32"))
    labels = [r.label for r in table.rows]
    assert labels[:2] == ["model_0 [ours]", "model_0 [published]"]
    assert table.cell(table.rows[2], "ImageNet") == "+0.12" and table.cell(table.rows[2], "ImageNetA") == "+0.00"
    uniform = [r for r in table.rows if r.label.startswith("uniform (all 1)")]
    assert table.cell(uniform[1], "ImageNet") == "79.97"  # the authors' uniform soup of 72
    assert table.notes[1] == "ImageNet: max |Δ| 0.12 points (+0.12); 1 of 2 within 0.1"
    assert reproduction_table([{"name": "ft", "kind": "finetune", "ImageNet": 0.5}]) is None


def _on_classes(rows, count):
    return [{**row, "meta": {"classes": {"count": count, "hash": f"h{count}"}}} for row in rows]


def test_comparing_other_class_spaces_warns_and_says_so_in_the_table(our_rows, caplog):
    import logging

    from soup_exp.data.classes import ClassSpace

    with caplog.at_level(logging.WARNING):
        table = comparison_table(build_table(our_rows), "paper_vitb32", our_rows=_on_classes(our_rows, 8))
    assert "our results are on 8 classes, paper's on 1000 classes" in caplog.text
    assert table.notes[0].startswith("Warning: our results are on 8 classes")
    caplog.clear()
    full = [{**row, "meta": {"classes": ClassSpace.full().identity()}} for row in our_rows]
    with caplog.at_level(logging.WARNING):
        table = comparison_table(build_table(our_rows), "paper_vitb32", our_rows=full)
    assert caplog.text == "" and not any("Warning" in n for n in table.notes)


def test_class_space_of_rows_without_meta_comes_from_the_model_directory(tmp_path, our_rows, caplog):
    import json
    import logging

    run = tmp_path / "ft_0"
    run.mkdir()
    (run / "ingredient.json").write_text(json.dumps({"name": "ft_0", "classes": [1, 5, 9]}))
    rows = [{**our_rows[0], "path": str(run)}]
    with caplog.at_level(logging.WARNING):
        comparison_table(build_table(rows), "paper_vitb32", our_rows=rows)
    assert "our results are on 3 classes" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):  # nothing to tell the class space from: no warning
        comparison_table(build_table(our_rows), "paper_vitb32", our_rows=our_rows)
    assert caplog.text == ""


def test_results_by_the_name_of_a_published_set(tmp_path, monkeypatch):
    from soup_exp.reporting.paper import results_rows

    rows = results_rows("paper_vitb32")
    assert {"model_43", "greedy_soup", "learned_soup"} <= {r["name"] for r in rows}
    store = ResultsStore(tmp_path / "mine.jsonl")
    store.upsert({"name": "mine", "kind": "soup", "ImageNet": 0.5})
    both = results_rows([str(store.path), "paper_vitb32"])
    assert {"mine", "model_43"} <= {r["name"] for r in both}
    monkeypatch.chdir(tmp_path)  # a folder named like the set is a path, and wins
    (tmp_path / "paper_vitb32").mkdir()
    (tmp_path / "paper_vitb32" / "r.jsonl").write_text('{"name": "local", "kind": "soup"}\n')
    assert [r["name"] for r in results_rows("paper_vitb32")] == ["local"]
