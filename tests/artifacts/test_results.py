"""results.jsonl: atomic upserts under concurrency, and reading ours and the authors' files."""

from __future__ import annotations

import json
import multiprocessing

import pytest

from soup_exp.artifacts.results import ResultsFormatError, ResultsStore, read_results
from soup_exp.reporting.paper import reference_dir

SHIFT_VALUES = {"ImageNetV2": 0.5, "ImageNetSketch": 0.3, "ImageNetR": 0.4, "ObjectNet": 0.2, "ImageNetA": 0.1}


def test_upsert_replaces_row_and_adds_metadata(tmp_path):
    store = ResultsStore(tmp_path / "results.jsonl")
    store.upsert({"name": "a", "kind": "finetune", "ImageNet": 0.5, **SHIFT_VALUES}, config={"lr": 1})
    store.upsert({"name": "b", "kind": "soup", "recipe": "uniform", "ImageNet": 0.6})
    store.upsert({"name": "a", "kind": "finetune", "ImageNet": 0.7})
    rows = store.rows()
    assert [r["name"] for r in rows] == ["a", "b"]
    assert rows[0]["ImageNet"] == 0.7 and "avg_shifts" not in rows[0]
    assert set(rows[1]["meta"]) >= {"time", "code_version"}
    first = ResultsStore(tmp_path / "other.jsonl").upsert({"name": "a", "kind": "finetune", **SHIFT_VALUES}, config={"lr": 1})
    assert first["avg_shifts"] == pytest.approx(0.3)
    assert len(first["meta"]["config_hash"]) == 16
    assert store.get("b")["recipe"] == "uniform" and store.get("zzz") is None


def _write_many(path: str, writer: int, count: int) -> None:
    store = ResultsStore(path)
    for i in range(count):
        store.upsert({"name": f"w{writer}-{i}", "kind": "finetune", "ImageNet": i / count})


def test_concurrent_writers_lose_no_rows(tmp_path):
    path = tmp_path / "results.jsonl"
    ctx = multiprocessing.get_context("fork")  # test functions are not importable by spawned children
    workers = [ctx.Process(target=_write_many, args=(str(path), w, 25)) for w in range(2)]
    for p in workers:
        p.start()
    for p in workers:
        p.join(timeout=120)
        assert p.exitcode == 0
    lines = path.read_text().splitlines()
    assert len(lines) == 50
    assert {json.loads(line)["name"] for line in lines} == {f"w{w}-{i}" for w in range(2) for i in range(25)}


def test_reads_the_authors_files_with_inferred_kinds():
    rows = {r["name"]: r for r in read_results(reference_dir("paper_vitb32"))}
    assert len(rows) == 75
    assert rows["model_0"]["kind"] == "lp"
    assert rows["model_43"]["kind"] == "finetune"
    assert (rows["uniform_soup"]["kind"], rows["uniform_soup"]["recipe"]) == ("soup", "uniform")
    assert (rows["greedy_soup"]["kind"], rows["greedy_soup"]["recipe"]) == ("soup", "greedy")
    assert (rows["ensemble"]["kind"], rows["ensemble"]["recipe"]) == ("ensemble", "ensemble")
    assert rows["model_43"]["avg_shifts"] == pytest.approx(0.4797, abs=5e-5)
    assert "model_name" not in rows["model_43"]


def test_read_results_accepts_files_lists_and_dirs(tmp_path):
    (tmp_path / "a").mkdir()
    ResultsStore(tmp_path / "a" / "results.jsonl").upsert({"name": "x", "kind": "zeroshot", "ImageNet": 0.1})
    ResultsStore(tmp_path / "b.jsonl").upsert({"name": "y", "kind": "finetune", "ImageNet": 0.2})
    assert [r["name"] for r in read_results(tmp_path / "b.jsonl")] == ["y"]
    assert {r["name"] for r in read_results([str(tmp_path / "a"), tmp_path / "b.jsonl"])} == {"x", "y"}
    assert {r["name"] for r in read_results(tmp_path)} == {"y"}  # top-level *.jsonl first


def test_later_file_wins_on_duplicate_names(tmp_path):
    ResultsStore(tmp_path / "1.jsonl").upsert({"name": "x", "kind": "soup", "recipe": "uniform", "ImageNet": 0.1})
    ResultsStore(tmp_path / "2.jsonl").upsert({"name": "x", "kind": "soup", "recipe": "uniform", "ImageNet": 0.3})
    with pytest.warns(UserWarning, match="appears twice"):
        rows = read_results([tmp_path / "1.jsonl", tmp_path / "2.jsonl"])
    assert [r["ImageNet"] for r in rows] == [0.3]


def test_bad_inputs_have_clear_errors(tmp_path):
    with pytest.raises(ResultsFormatError, match="does not exist"):
        read_results(tmp_path / "missing.jsonl")
    with pytest.raises(ResultsFormatError, match="no \\*.jsonl"):
        read_results(tmp_path)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"name": "a", "kind": "lp"}\n{not json\n')
    with pytest.raises(ResultsFormatError, match="bad.jsonl, line 2"):
        read_results(bad)
    bad.write_text('{"ImageNet": 0.5}\n')
    with pytest.raises(ResultsFormatError, match="no 'name'"):
        read_results(bad)
    with pytest.raises(ResultsFormatError, match="no 'name'"):
        ResultsStore(tmp_path / "r.jsonl").upsert({"kind": "soup"})


def test_a_duplicated_row_resolves_to_its_last_row_for_upsert_and_report(tmp_path):
    """Issue 25 item 5: the stale 99 % row listed last used to win the report, while upsert
    replaced the first; now the last row of a name wins everywhere and a write collapses them."""
    path = tmp_path / "results.jsonl"
    path.write_text('{"name": "greedy", "kind": "soup", "recipe": "greedy", "ImageNet": 0.5}\n'
                    '{"name": "greedy", "kind": "soup", "recipe": "greedy", "ImageNet": 0.99}\n'
                    '{"name": "ft_0", "kind": "finetune", "ImageNet": 0.4}\n')
    with pytest.warns(UserWarning, match="'greedy' appears twice; keeping its last row"):
        assert [r["ImageNet"] for r in read_results(path) if r["name"] == "greedy"] == [0.99]
    with pytest.warns(UserWarning, match="appears twice"):
        assert ResultsStore(path).get("greedy")["ImageNet"] == 0.99
    with pytest.warns(UserWarning, match="appears twice"):
        ResultsStore(path).upsert({"name": "greedy", "kind": "soup", "recipe": "greedy", "ImageNet": 0.6})
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(r["name"], r["ImageNet"]) for r in lines] == [("greedy", 0.6), ("ft_0", 0.4)]
    assert {r["name"]: r["ImageNet"] for r in read_results(path)} == {"greedy": 0.6, "ft_0": 0.4}


@pytest.mark.parametrize("value", ["18.75", "57.0", "-0.2", "NaN", "Infinity"])
def test_an_accuracy_outside_0_1_is_named_by_file_line_and_key(tmp_path, value):
    """Issue 25 item 6: a percentage (18.75 printed as 1875.00) is refused."""
    path = tmp_path / "results.jsonl"
    path.write_text('{"name": "ft_0", "kind": "finetune", "ImageNet": 0.5}\n'
                    f'{{"name": "ft_1", "kind": "finetune", "ImageNetV2": {value}}}\n')
    with pytest.raises(ResultsFormatError) as err:
        read_results(path)
    assert str(err.value) == (f"{path}, line 2: ImageNetV2={float(value)!r} in row 'ft_1' is not an accuracy "
                              "(accuracies are fractions in [0, 1], or null)")
    with pytest.raises(ResultsFormatError, match="is not an accuracy"):
        ResultsStore(tmp_path / "new.jsonl").upsert({"name": "x", "kind": "soup", "ImageNet": float(value)})


@pytest.mark.parametrize("field, expected", [
    ('"kind": ["soup"]', "kind=['soup'] in row 'uniform' must be str"),
    ('"kind": "soup", "alpha": "half"', "alpha='half' in row 'uniform' must be int or float"),
    ('"kind": "soup", "alpha": true', "alpha=True in row 'uniform' must be int or float"),
    ('"kind": "soup", "recipe": 3', "recipe=3 in row 'uniform' must be str"),
    ('"kind": "soup", "num_ingredients": 2.5', "num_ingredients=2.5 in row 'uniform' must be int"),
    ('"kind": "soup", "meta": [1]', "meta=[1] in row 'uniform' must be an object"),
])
def test_a_field_of_the_wrong_type_is_named_by_file_line_and_key(tmp_path, field, expected):
    """Issue 25 item 18: bad types are one error line, not a traceback in the report."""
    path = tmp_path / "results.jsonl"
    path.write_text(f'{{"name": "ft_0", "kind": "finetune"}}\n{{"name": "uniform", {field}, "ImageNet": 0.5}}\n')
    with pytest.raises(ResultsFormatError) as err:
        read_results(path)
    assert str(err.value).startswith(f"{path}, line 2: {expected}")
