"""The report across experiments (``name='demo-s*'``): its numbers against hand computations,
which experiments a pattern finds, its files, and the CLI and Python API agreeing."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from soup_exp.errors import ConfigError
from soup_exp.report import run_report
from soup_exp.reporting.across import across_dir, find_experiments, report_across
from soup_exp.stages.experiment import check_names
from soup_exp.utils.config import SECRETS_ENV
from soup_exp.vocabulary import ACCURACY_KEYS, AVG_SHIFTS, HELD_OUT, IMAGENET

# Per experiment: the best individual's accuracy (every key) and the gains of the soups
# and the ensemble over it (fractions, every key alike).
EXPERIMENTS = {
    "demo-s1": {"best": 0.70, "greedy": 0.02, "uniform": 0.01, "ensemble": 0.03, "kept": 3},
    "demo-s2": {"best": 0.72, "greedy": -0.01, "uniform": 0.02, "ensemble": 0.03, "kept": 2},
    "demo-s10": {"best": 0.68, "greedy": 0.03, "uniform": 0.0, "ensemble": 0.01, "kept": 4},
}
ORDER = ["demo-s1", "demo-s2", "demo-s10"]  # natural order: s2 before s10


def _row(name: str, kind: str, accuracy: float, **extra) -> dict:
    return {"name": name, "kind": kind, **{key: round(accuracy, 4) for key in ACCURACY_KEYS}, **extra}


def _write_experiment(root: Path, name: str, best: float, greedy: float, uniform: float, ensemble: float,
                      kept: int) -> None:
    rows = [
        _row("zeroshot", "zeroshot", 0.40),
        _row("lp", "lp", 0.50),
        _row("ft_0", "finetune", best),
        {**_row("ft_1", "finetune", best - 0.05), IMAGENET: 0.99},  # best on ImageNet, not on held-out
        _row("greedy", "soup", best + greedy, recipe="greedy", num_ingredients=kept),
        _row("uniform", "soup", best + uniform, recipe="uniform", num_ingredients=5),
        _row("ensemble", "ensemble", best + ensemble, recipe="ensemble", num_ingredients=5),
    ]
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "experiment.json").write_text(json.dumps({"name": name}))


@pytest.fixture
def outputs(tmp_path) -> Path:
    """Three matching experiments, one matching experiment without results, one other
    experiment, and a matching file and a folder that are no experiment."""
    root = tmp_path / "outputs"
    for name, numbers in EXPERIMENTS.items():
        _write_experiment(root, name, **numbers)
    (root / "demo-s3").mkdir()
    (root / "demo-s3" / "experiment.json").write_text(json.dumps({"name": "demo-s3"}))  # trained, not evaluated
    _write_experiment(root, "other", 0.5, 0.0, 0.0, 0.0, 1)
    (root / "demo-s1.log").write_text("a log beside the runs\n")
    (root / "demo-scratch").mkdir()
    return root


def _compose(*overrides: str):
    from hydra import compose, initialize_config_dir

    from soup_exp.stages.entry import packaged_config_dir

    with initialize_config_dir(config_dir=str(packaged_config_dir()), version_base="1.3"):
        return compose(config_name="report", overrides=list(overrides))


def _results(root: Path) -> dict[str, Path]:
    return {name: root / name / "results.jsonl" for name in ORDER}


def _stdev(values: list[float]) -> float:
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def test_means_spreads_and_signs_equal_hand_computations(outputs, tmp_path):
    across, _ = report_across(_results(outputs), tmp_path / "report")
    assert across.experiments == tuple(ORDER)

    greedy_in = across.claim("best_individual", "greedy", IMAGENET)
    assert greedy_in.label == "Greedy soup vs Best individual on held-out"
    assert greedy_in.gain.values == pytest.approx({"demo-s1": 2.0, "demo-s2": -1.0, "demo-s10": 3.0})
    assert greedy_in.gain.mean == pytest.approx(4 / 3)
    assert greedy_in.gain.std == pytest.approx(math.sqrt(13 / 3))  # squares 4/9 + 49/9 + 25/9, over n - 1
    assert (greedy_in.gain.low, greedy_in.gain.high, greedy_in.gain.n) == pytest.approx((-1.0, 3.0, 3))
    assert greedy_in.gain.signs() == "+ \u2212 +"
    assert greedy_in.sentence() == ("Greedy soup vs Best individual on held-out, ImageNet: +1.33 ± 2.08 "
                                    "(3 runs; + \u2212 +)")

    uniform_shifts = across.claim("best_individual", "uniform", AVG_SHIFTS)
    assert (uniform_shifts.gain.mean, uniform_shifts.gain.std) == pytest.approx((1.0, 1.0))
    assert uniform_shifts.gain.signs() == "+ + 0"
    finetuned = across.claim("zeroshot", "best_individual", HELD_OUT)
    assert finetuned.gain.mean == pytest.approx(30.0) and finetuned.gain.std == pytest.approx(2.0)
    greedy_vs_ensemble = across.claim("ensemble", "greedy", IMAGENET)
    assert greedy_vs_ensemble.gain.values == pytest.approx({"demo-s1": -1.0, "demo-s2": -4.0, "demo-s10": 2.0})
    assert len(across.claims) == 4 * 3  # every FINDINGS pair on held-out, ImageNet and Avg shifts

    best = across.line("best_individual")
    assert best.label == "Best individual on held-out"  # its model's name differs between seeds
    assert best.cells[IMAGENET].values == pytest.approx({"demo-s1": 70.0, "demo-s2": 72.0, "demo-s10": 68.0})
    greedy = across.line("greedy")
    assert greedy.label == "Greedy soup"  # "(3 models)", "(2 models)", ...
    greedy_in_values = [72.0, 71.0, 71.0]
    assert greedy.cells[IMAGENET].mean == pytest.approx(sum(greedy_in_values) / 3)
    assert greedy.cells[IMAGENET].std == pytest.approx(_stdev(greedy_in_values))
    assert [line.key for line in across.lines] == ["zeroshot", "lp_init", "best_individual", "uniform", "greedy",
                                                   "ensemble"]


def test_a_pattern_finds_exactly_the_matching_experiments(outputs):
    assert find_experiments(outputs, "demo-s*") == (ORDER, ["demo-s3"])
    assert find_experiments(outputs, "demo-s?") == (["demo-s1", "demo-s2"], ["demo-s3"])
    assert find_experiments(outputs, "demo-s[12]*") == (ORDER, [])
    assert find_experiments(outputs, "*") == ([*ORDER, "other"], ["demo-s3"])
    assert find_experiments(outputs, "DEMO-S*".lower()) == (ORDER, ["demo-s3"])
    with pytest.raises(ConfigError, match="matches no experiment"):
        find_experiments(outputs, "DEMO-S*")  # case matters, as it does for the folders


def test_no_match_is_an_error_naming_the_experiments_there(outputs, tmp_path):
    with pytest.raises(ConfigError) as err:
        find_experiments(outputs, "demo-seed*")
    assert str(err.value) == (f"name='demo-seed*' matches no experiment under {outputs}; experiments there: "
                              "demo-s1, demo-s2, demo-s3, demo-s10, other")
    with pytest.raises(ConfigError, match="none of the matching experiments .* has a results.jsonl"):
        find_experiments(outputs, "demo-s3*")
    with pytest.raises(ConfigError, match="it holds no experiment"):
        find_experiments(tmp_path / "nothing", "demo-s*")


def test_tables_written_as_markdown_latex_and_csv(outputs, tmp_path):
    across, written = report_across(_results(outputs), tmp_path / "report")
    assert set(written) == {f"{base}.{fmt}" for base in ("across_table", "across_claims") for fmt in ("md", "tex", "csv")}
    assert all(path.parent == tmp_path / "report" for path in written.values())

    table_md = written["across_table.md"].read_text()
    assert "over 3 experiments (demo-s1, demo-s2, demo-s10)" in table_md
    assert "| Greedy soup | 71.33 ± 0.58 | 71.33 ± 0.58 |" in table_md  # 72, 71 and 71 on both
    claims_md = written["across_claims.md"].read_text()
    assert "| Greedy soup vs Best individual on held-out | ImageNet | +1.33 ± 2.08 | \u22121.00 | +3.00 | 3 | "\
           "+ \u2212 + |" in claims_md

    tex = written["across_claims.tex"].read_text()
    assert "\\begin{tabular}{lrrrrrr}" in tex and "+1.33 $\\pm$ 2.08" in tex and "$-$1.00" in tex
    assert "\\bottomrule" in written["across_table.tex"].read_text()

    claims = list(csv.DictReader(io.StringIO(written["across_claims.csv"].read_text())))
    greedy_in = next(r for r in claims if r["claim"].startswith("Greedy soup vs Best") and r["metric"] == IMAGENET)
    assert float(greedy_in["mean"]) == pytest.approx(4 / 3, abs=1e-4)
    assert float(greedy_in["std"]) == pytest.approx(math.sqrt(13 / 3), abs=1e-4)
    assert (greedy_in["min"], greedy_in["max"], greedy_in["n"], greedy_in["signs"]) == ("-1.0000", "3.0000", "3",
                                                                                      "+ - +")
    assert [float(greedy_in[name]) for name in ORDER] == pytest.approx([2.0, -1.0, 3.0])
    lines = list(csv.DictReader(io.StringIO(written["across_table.csv"].read_text())))
    best_in = next(r for r in lines if r["method"] == "Best individual on held-out" and r["metric"] == IMAGENET)
    assert (float(best_in["mean"]), float(best_in["std"])) == pytest.approx((70.0, 2.0))


def test_a_line_missing_in_one_experiment_says_in_how_many(outputs, tmp_path):
    rows = (outputs / "demo-s2" / "results.jsonl").read_text().splitlines()
    (outputs / "demo-s2" / "results.jsonl").write_text("".join(r + "\n" for r in rows if '"ensemble"' not in r))
    across, written = report_across(_results(outputs), tmp_path / "report")
    assert across.line("ensemble").n == 2
    assert across.claim("ensemble", "greedy", IMAGENET).gain.signs() == "\u2212 +"
    assert "| Ensemble (in 2 of 3) |" in written["across_table.md"].read_text()


def test_the_report_stage_warns_about_an_experiment_without_results_and_reports_the_rest(outputs, capsys):
    cfg = _compose(f"paths.output_dir={outputs}", "name=demo-s*", "logger=disabled")
    with pytest.warns(UserWarning, match=r"experiment demo-s3 matches name='demo-s\*' but has no .*results.jsonl"):
        written = run_report(cfg)
    assert {p.parent for p in written.values()} == {outputs / "across" / "demo-s_"}
    printed = capsys.readouterr().out
    assert "Greedy soup vs Best individual on held-out, ImageNet: +1.33 ± 2.08 (3 runs; + \u2212 +)" in printed
    assert "| Greedy soup | 71.33 ± 0.58 |" in printed


def test_a_report_dir_given_is_used_and_an_experiment_named_across_is_not_written_into(outputs, tmp_path):
    cfg = _compose(f"paths.output_dir={outputs}", "name=demo-s1*", "logger=disabled",
                   f"report_dir={tmp_path / 'mine'}")
    assert {p.parent for p in run_report(cfg).values()} == {tmp_path / "mine"}
    (outputs / "across").mkdir()
    (outputs / "across" / "experiment.json").write_text("{}")
    with pytest.raises(ConfigError, match="is an experiment's output folder; .* report_dir="):
        across_dir(outputs, "demo-s*")


@pytest.mark.parametrize("override", ["compare=paper_vitb32", "results=elsewhere.jsonl"])
def test_an_across_report_refuses_what_applies_to_one_experiment(outputs, override):
    from soup_exp.report import check_report

    cfg = _compose(f"paths.output_dir={outputs}", "name=demo-s*", override, "dry_run=true")
    with pytest.raises(ConfigError, match=override.partition("=")[0]):
        check_report(cfg)


def test_only_the_report_takes_a_pattern_for_name():
    check_names({"stage": "report", "name": "demo-seed*"})
    for stage in ("finetune", "soup", "evaluate", "analyze", "pipeline"):
        for name in ("demo-seed*", "demo-seed?", "demo-seed[01]"):
            with pytest.raises(ConfigError, match=f"only `soup-exp report` reads .* for {stage}"):
                check_names({"stage": stage, "name": name})
    check_names({"stage": "finetune", "name": "demo-seed0"})
    with pytest.raises(Exception, match="not a valid name"):
        check_names({"stage": "report", "name": "../demo-s*"})  # a pattern is still one path component


def _cli(outputs: Path, *args: str, module: str = "soup_exp.report") -> subprocess.CompletedProcess:
    env = {**os.environ, "SOUP_OUTPUT_DIR": str(outputs)}
    env.pop(SECRETS_ENV, None)
    return subprocess.run([sys.executable, "-m", module, "name=demo-s*", "logger=disabled", *args],
                          cwd=outputs.parent, env=env, capture_output=True, text=True, timeout=300)


def test_a_pipeline_named_with_a_pattern_is_refused_before_anything_is_written(tmp_path):
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    result = _cli(outputs, "experiment=smoke", module="soup_exp.pipeline")
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1].startswith("soup-exp pipeline: error: name='demo-s*': * ? [ make")
    assert list(tmp_path.rglob("*")) == [outputs]


def _files(folder: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(folder.iterdir())}


def test_the_cli_and_the_python_api_write_the_same_files(outputs):
    planned = _cli(outputs, "--dry-run")
    assert planned.returncode == 0, planned.stderr
    assert "across 3 experiments matching 'demo-s*'" in planned.stdout and "left out, no results.jsonl: demo-s3" \
        in planned.stdout
    assert not (outputs / "across").exists()

    done = _cli(outputs)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "demo-s3 matches name='demo-s*' but has no" in done.stderr
    written = outputs / "across" / "demo-s_"
    by_cli = _files(written)
    assert len(by_cli) == 6
    assert sorted(p.name for p in outputs.iterdir()) == ["across", "demo-s1", "demo-s1.log", "demo-s10", "demo-s2",
                                                         "demo-s3", "demo-scratch", "other"]  # no folder "demo-s*"

    for path in written.iterdir():
        path.unlink()
    with pytest.warns(UserWarning, match="demo-s3"):
        run_report(_compose(f"paths.output_dir={outputs}", "name=demo-s*", "logger=disabled"))
    assert _files(written) == by_cli
    _, api = report_across(_results(outputs), outputs.parent / "api")
    assert {name: path.read_text() for name, path in api.items()} == by_cli


def test_the_across_report_logs_one_wandb_run_beside_its_tables_and_a_rerun_adds_none(outputs):
    from soup_exp.tracking.offline_runs import read_offline_run

    cfg = _compose(f"paths.output_dir={outputs}", "name=demo-s1*", "logger.mode=offline")
    written = run_report(cfg)
    report_dir = outputs / "across" / "demo-s1_"
    run_dirs = list((report_dir / "wandb").glob("offline-run-*"))
    assert len(run_dirs) == 1 and {p.parent for p in written.values()} == {report_dir}
    logged = read_offline_run(run_dirs[0])
    assert logged.job_type == "report" and logged.name == "report-demo-s1*" and logged.group == "demo-s1*"
    assert logged.summary["num_experiments"] == 2 and logged.summary["experiments"] == ["demo-s1", "demo-s10"]
    greedy_in = [100 * (0.70 + 0.02), 100 * (0.68 + 0.03)]
    assert logged.summary[f"greedy/{IMAGENET}"] == pytest.approx(sum(greedy_in) / 2)
    assert logged.summary[f"greedy/{IMAGENET}_std"] == pytest.approx(_stdev(greedy_in))
    gains = [100 * 0.02, 100 * 0.03]
    assert logged.summary[f"claims/greedy_vs_best_individual/{HELD_OUT}"] == pytest.approx(sum(gains) / 2)
    tables = sorted(p.name.split("_")[0] + "_" + p.name.split("_")[1] for p in
                    (run_dirs[0] / "files" / "media" / "table").rglob("*.table.json"))
    assert tables == ["across_claims", "across_table"]
    claims = json.loads(next((run_dirs[0] / "files" / "media" / "table").rglob("across_claims*.json")).read_text())
    assert claims["columns"] == ["claim", "metric", "n", "mean", "std", "min", "max", "signs", "demo-s1", "demo-s10"]
    assert not (outputs / "demo-s1*").exists()

    run_report(cfg)  # the same experiments and numbers: that run has them already
    assert list((report_dir / "wandb").glob("offline-run-*")) == run_dirs
    _write_experiment(outputs, "demo-s11", 0.60, 0.01, 0.01, 0.01, 2)
    run_report(cfg)  # one more experiment: a new run
    assert len(list((report_dir / "wandb").glob("offline-run-*"))) == 2
