"""`run_report`: every artefact written, W&B run readable back, disabled writes only the report."""

from __future__ import annotations

import json

from soup_exp.artifacts.results import ResultsStore
from soup_exp.report import run_report
from soup_exp.tracking.offline_runs import read_offline_run


def _compose(*overrides):
    from hydra import compose, initialize_config_dir

    from soup_exp.stages.entry import packaged_config_dir

    with initialize_config_dir(config_dir=str(packaged_config_dir()), version_base="1.3"):
        return compose(config_name="report", overrides=list(overrides))


def _experiment(tmp_path, our_rows, greedy_soup_json, learned_soup_json):
    store = ResultsStore(tmp_path / "out" / "exp" / "results.jsonl")
    for row in our_rows:
        store.upsert({k: v for k, v in row.items() if k != "num_ingredients" or row["name"] != "greedy"})
    for soup in (greedy_soup_json, learned_soup_json):
        folder = tmp_path / "out" / "exp" / "soups" / soup["name"]
        folder.mkdir(parents=True)
        (folder / "soup.json").write_text(json.dumps(soup))
    _analysis(tmp_path / "out" / "exp" / "report" / "analysis" / "calibration")
    return _compose(f"paths.output_dir={tmp_path / 'out'}", "name=exp", "compare=paper_vitb32",
                    "logger.project=soup-test")


def _analysis(folder):
    """What `soup-exp analyze` leaves: a figure, its data and the record listing them."""
    from soup_exp.reporting.figures import new_figure, save_data, save_figure

    fig, ax = new_figure()
    ax.plot([0, 1], [1, 0])
    save_figure(fig, folder / "reliability")
    save_data(["x"], [[1]], folder / "reliability")
    (folder / "analysis.json").write_text(json.dumps({
        "name": "calibration", "label": "Calibration", "numbers": {"bins": 15, "ece": {"ft_0": {"ImageNet": 0.1}}},
        "outputs": ["reliability.png", "reliability.pdf", "reliability.csv"]}))


def test_report_writes_tables_figures_and_an_offline_run(tmp_path, our_rows, greedy_soup_json, learned_soup_json, capsys):
    cfg = _experiment(tmp_path, our_rows, greedy_soup_json, learned_soup_json)
    outputs = run_report(cfg)
    expected = {f"{t}.{f}" for t in ("table", "comparison", "leaderboard") for f in ("md", "tex", "csv")} | {
        f"{fig}.{f}" for fig in ("figure1", "greedy_trajectory_greedy", "coefficients_learned_by_layer")
        for f in ("png", "pdf")
    } | {"figure1.csv", "greedy_trajectory_greedy.csv", "coefficients_learned_by_layer.csv"} | {
        f"analysis/calibration/reliability.{f}" for f in ("png", "pdf", "csv")} | {"analyses.md"}  # listed, not redrawn
    assert set(outputs) == expected
    index = outputs["analyses.md"].read_text()
    assert "## Calibration" in index and "bins: 15" in index
    assert "![reliability](analysis/calibration/reliability.png)" in index
    assert "[data](analysis/calibration/reliability.csv)" in index
    assert all(p.is_file() and p.stat().st_size > 0 for p in outputs.values())
    table_md = outputs["table.md"].read_text()
    assert "Greedy soup (2 models)" in table_md  # count taken from soup.json
    printed = capsys.readouterr().out
    assert table_md in printed and "report written to" in printed

    run_dirs = list((tmp_path / "out" / "exp" / "wandb").glob("offline-run-*"))
    assert len(run_dirs) == 1
    logged = read_offline_run(run_dirs[0])
    assert logged.job_type == "report" and logged.group == "exp"
    assert abs(logged.summary["greedy/ImageNet"] - 0.82) < 1e-9
    assert logged.summary["num_results"] == len(our_rows)
    images = list((run_dirs[0] / "files" / "media" / "images").rglob("*.png"))
    assert len(images) == 4
    assert any(p.parent.name == "calibration" and p.name.startswith("reliability") for p in images)
    tables = list((run_dirs[0] / "files" / "media" / "table").rglob("*.table.json"))
    assert len(tables) == 3  # results, comparison, leaderboard

    run_report(cfg)  # the same tables, figures and numbers: that run has them already
    assert list((tmp_path / "out" / "exp" / "wandb").glob("offline-run-*")) == run_dirs
    store = ResultsStore(tmp_path / "out" / "exp" / "results.jsonl")
    store.upsert({**our_rows[0], "ImageNet": our_rows[0]["ImageNet"] / 2})
    run_report(cfg)  # a number changed: a new run
    assert len(list((tmp_path / "out" / "exp" / "wandb").glob("offline-run-*"))) == 2


def test_report_on_the_authors_files_with_wandb_disabled(tmp_path):
    from soup_exp.reporting.paper import reference_dir

    results = "[" + ",".join(str(p) for p in sorted(reference_dir("paper_vitb32").glob("*.jsonl"))) + "]"
    cfg = _compose(f"results={results}", f"report_dir={tmp_path / 'report'}", "formats=[md]",
                   "logger=disabled", f"soups_dir={tmp_path / 'no-soups'}")
    outputs = run_report(cfg)
    assert set(outputs) == {"table.md", "leaderboard.md", "figure1.png", "figure1.pdf", "figure1.csv"}
    assert "| Greedy soup | 83.98 | 81.03 |" in outputs["table.md"].read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["report"]


def test_report_of_the_published_set_by_name(tmp_path):
    cfg = {"name": "paper", "results": "paper_vitb32", "compare": None, "report_dir": str(tmp_path / "report"),
           "formats": ["md"], "logger": {"mode": "disabled"}, "per_recipe": "best",
           "soups_dir": str(tmp_path / "no-soups")}
    outputs = run_report(cfg)
    table = outputs["table.md"].read_text()
    assert "| Greedy soup | 83.98 | 81.03 |" in table and "Learned soup (paper text)" in table


def test_a_percentage_or_a_bad_type_in_a_row_is_one_line_naming_file_line_and_key(tmp_path, capsys):
    """Issue 25 items 6 and 18, at the report: no 1875.00 in a table, no traceback."""
    from stage_errors import stage_error

    results = tmp_path / "results.jsonl"
    cfg = _compose(f"results={results}", f"report_dir={tmp_path / 'report'}", "formats=[md]",
                   "logger=disabled", f"soups_dir={tmp_path / 'no-soups'}")
    for row, key in [('"kind": "finetune", "ImageNet": 18.75', "ImageNet=18.75"),
                     ('"kind": ["finetune"], "ImageNet": 0.5', "kind=['finetune']"),
                     ('"kind": "wise_ft", "alpha": "half", "ImageNet": 0.5', "alpha='half'")]:
        results.write_text(f'{{"name": "zeroshot", "kind": "zeroshot", "ImageNet": 0.6}}\n{{"name": "ft_0", {row}}}\n')
        err = stage_error(cfg, run_report, capsys)
        assert f"{results}, line 2: {key} in row 'ft_0'" in err
    assert not (tmp_path / "report" / "table.md").exists()


def test_a_missing_results_file_names_the_experiments_that_have_one(tmp_path, capsys):
    """Issue 24 item 9: `report compare=paper_vitb32` without `experiment=` reads
    outputs/default; the error says which experiments have results and how to pick one."""
    from stage_errors import stage_error

    cfg = _compose(f"paths.output_dir={tmp_path / 'out'}", "compare=paper_vitb32", "logger=disabled")
    err = stage_error(cfg, run_report, capsys)
    assert f"results file {tmp_path / 'out' / 'default' / 'results.jsonl'} does not exist" in err
    assert "experiments under" not in err  # none to point to
    for name in ("demo", "mine"):
        ResultsStore(tmp_path / "out" / name / "results.jsonl").upsert({"name": "zeroshot", "kind": "zeroshot",
                                                                        "ImageNet": 0.6})
    err = stage_error(cfg, run_report, capsys)
    assert (f"experiments under {tmp_path / 'out'} with results: demo (add experiment=demo), "
            "mine (add name=mine); or give results=PATH") in err
    cfg = _compose(f"paths.output_dir={tmp_path / 'out'}", f"results={tmp_path / 'nope.jsonl'}", "logger=disabled")
    assert "experiments under" not in stage_error(cfg, run_report, capsys)  # a path of the user's own: no guess
