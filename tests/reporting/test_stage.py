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
           "soups_dir": str(tmp_path / "no-soups"), "uncertainty": {"replicates": 1000, "seed": 0, "level": 0.95}}
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


def _row_with_hits(store, name, kind, recipe, hits):
    """A result row whose accuracies are its hits' means, stored with the hits."""
    import numpy as np

    from soup_exp.artifacts.correctness import Hits

    meta = {"weights": f"w-{name}", "datasets": {d: f"id-{d}" for d in hits}}
    row = {"name": name, "kind": kind, **({"recipe": recipe} if recipe else {}),
           **{d: float(np.mean(bits)) for d, bits in hits.items()}, "meta": meta}
    store.upsert(row, hits={d: Hits(np.asarray(bits), f"id-{d}", f"w-{name}") for d, bits in hits.items()})


def test_the_report_prints_intervals_and_significance_from_the_kept_hits(tmp_path):
    """Cells `acc ± half-width` (md), `$\\pm$` (tex), bounds columns (csv); the summary's
    differences with their paired interval and McNemar's p, as the bootstrap gives them."""
    import numpy as np

    from soup_exp.reporting.uncertainty import PairedBootstrap
    from soup_exp.vocabulary import SHIFTS

    rng = np.random.default_rng(0)
    datasets = ["ImageNet2p", "ImageNet", *SHIFTS]
    base = {d: rng.random(600) < 0.6 for d in datasets}
    better = {d: bits | (rng.random(600) < 0.25) for d, bits in base.items()}  # right wherever base is, and more
    store = ResultsStore(tmp_path / "results.jsonl")
    _row_with_hits(store, "zeroshot", "zeroshot", None, {d: rng.random(600) < 0.4 for d in datasets})
    _row_with_hits(store, "ft_0", "finetune", None, base)
    _row_with_hits(store, "greedy_soup", "soup", "greedy", better)
    cfg = _compose(f"results={store.path}", f"report_dir={tmp_path / 'report'}", "logger=disabled",
                   f"soups_dir={tmp_path / 'no-soups'}", "uncertainty.replicates=500")
    outputs = run_report(cfg)

    boot = PairedBootstrap({"ft_0": base, "greedy_soup": better}, replicates=500, seed=0,
                           identities={m: {d: f"id-{d}" for d in datasets} for m in ("ft_0", "greedy_soup")})
    greedy_in = boot.interval("greedy_soup", "ImageNet")
    md = outputs["table.md"].read_text()
    assert f"| {100 * better['ImageNet'].mean():.2f} ± {100 * greedy_in.half_width:.2f} |" in md
    gain = boot.difference("greedy_soup", "ft_0", "ImageNet")
    assert gain.significant and gain.mcnemar.only_b == 0
    assert (f"ImageNet {100 * gain.estimate:+.2f} [{100 * gain.interval.low:+.2f}, {100 * gain.interval.high:+.2f}] "
            f"(p={gain.mcnemar.p_value:.2g}, significant)") in md
    assert "Avg shifts" in md and "McNemar's exact p < 0.05" in md
    assert r"$\pm$" in outputs["table.tex"].read_text()
    header, *lines = outputs["table.csv"].read_text().splitlines()
    assert "ImageNet,ImageNet_low,ImageNet_high" in header
    assert f"{100 * greedy_in.low:.2f},{100 * greedy_in.high:.2f}" in next(line for line in lines if "greedy_soup" in line)

    plain = run_report(_compose(f"results={store.path}", f"report_dir={tmp_path / 'plain'}", "logger=disabled",
                                f"soups_dir={tmp_path / 'no-soups'}", "uncertainty.replicates=0"))
    assert " ± " not in plain["table.md"].read_text() and "_low" not in plain["table.csv"].read_text()


def test_hits_that_no_longer_match_their_row_give_no_interval(tmp_path):
    import numpy as np

    rng = np.random.default_rng(1)
    store = ResultsStore(tmp_path / "results.jsonl")
    _row_with_hits(store, "ft_0", "finetune", None, {"ImageNet2p": rng.random(50) < 0.5, "ImageNet": rng.random(50) < 0.5})
    row = store.get("ft_0")
    store.upsert({**row, "meta": {**row["meta"], "weights": "retrained"}})
    outputs = run_report(_compose(f"results={store.path}", f"report_dir={tmp_path / 'report'}", "logger=disabled",
                                  f"soups_dir={tmp_path / 'no-soups'}"))
    assert " ± " not in outputs["table.md"].read_text()


def test_the_leaderboard_gains_carry_their_paired_intervals(tmp_path):
    import numpy as np

    from soup_exp.reporting.uncertainty import PairedBootstrap

    rng = np.random.default_rng(2)
    base = {d: rng.random(400) < 0.6 for d in ("ImageNet2p", "ImageNet")}
    soup = {d: bits | (rng.random(400) < 0.1) for d, bits in base.items()}
    store = ResultsStore(tmp_path / "results.jsonl")
    _row_with_hits(store, "ft_0", "finetune", None, base)
    _row_with_hits(store, "uniform_soup", "soup", "uniform", soup)
    outputs = run_report(_compose(f"results={store.path}", f"report_dir={tmp_path / 'report'}", "logger=disabled",
                                  f"soups_dir={tmp_path / 'no-soups'}", "uncertainty.replicates=300"))
    gain = PairedBootstrap({"ft_0": base, "uniform_soup": soup}, replicates=300,
                           identities={m: {d: f"id-{d}" for d in base} for m in ("ft_0", "uniform_soup")}
                           ).difference("uniform_soup", "ft_0", "ImageNet")
    line = next(line for line in outputs["leaderboard.md"].read_text().splitlines() if "uniform" in line.lower())
    assert f"{100 * gain.estimate:+.2f} ± {100 * gain.interval.half_width:.2f}" in line
