"""`soup-exp analyze` end to end on the tiny world: every analysis, resume, W&B, plugins."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest

from soup_exp.analyze import run_analyze
from soup_exp.errors import ConfigError

USER_REPO = Path(__file__).parents[1] / "user_repo"
SMALL = ["analyses.landscape.grid=3", "analyses.landscape.train_images=60", "analyses.angles.max_pairs=3",
         "analyses.num_ingredients.draws=2", "analyses.greedy_ablation.orders=2",
         "analyses.greedy_ablation.tolerances=[0.0,0.01]"]
FIGURES = {
    "landscape": ["landscape_error", "landscape_train_loss"],
    "angles": ["soup_gain_vs_angle", "soup_gain_vs_ensemble_gain"],
    "num_ingredients": ["num_ingredients"],
    "greedy_ablation": ["greedy_orders", "greedy_tolerance"],
    "calibration": ["calibration_ece", "reliability"],
}


def test_a_second_run_recomputes_nothing_and_new_parameters_redo_it(world, caplog, fake_run):
    cheap = ["analyses=[num_ingredients]", "analyses.num_ingredients.ks=[1,5]", "analyses.num_ingredients.greedy=null"]
    first = run_analyze(world.cfg(*cheap), run=fake_run())
    passes = len(world.forward_passes)
    assert passes > 0
    with caplog.at_level("INFO"):
        assert run_analyze(world.cfg(*cheap), run=fake_run()) == first
    assert len(world.forward_passes) == passes and "already done" in caplog.text
    record = first["num_ingredients"] / "analysis.json"
    before = record.stat().st_mtime_ns
    run_analyze(world.cfg(*cheap, "analyses.num_ingredients.draws=1"), run=fake_run())
    assert record.stat().st_mtime_ns != before and len(world.forward_passes) > passes


@pytest.mark.slow
def test_every_analysis_then_nothing_again(world, cook, caplog, fake_run):
    cook("uniform", "greedy", "ensemble")
    run = fake_run()
    made = run_analyze(world.cfg(*SMALL), run=run)
    assert list(made) == list(FIGURES)
    for name, stems in FIGURES.items():
        folder = world.out / "report" / "analysis" / name
        assert made[name] == folder
        record = json.loads((folder / "analysis.json").read_text())
        assert record["name"] == name and record["numbers"] and record["seconds"] >= 0
        assert record["outputs"] == [f"{s}.{x}" for s in stems for x in ("png", "pdf", "csv")]
        for stem in stems:
            assert f"analysis/{name}/{stem}" in run.images and f"analysis/{name}/{stem}" in run.tables
        assert not (folder / ".partial.json").exists()
    assert run.summaries["analysis/angles/pairs"] == 3
    calibration = json.loads((world.out / "report" / "analysis" / "calibration" / "analysis.json").read_text())
    assert any(path.endswith("soups/ensemble/soup.json") for path in calibration["inputs"])  # soups it read

    passes = len(world.forward_passes)
    with caplog.at_level("INFO"):
        again = run_analyze(world.cfg(*SMALL), run=fake_run())
    assert again == made and len(world.forward_passes) == passes  # nothing recomputed
    assert caplog.text.count("already done") == len(FIGURES)

    caplog.clear()  # another parameter, or a soup cooked again, redoes only what depends on it
    cook_dir = world.out / "soups" / "ensemble"
    for path in cook_dir.iterdir():
        path.unlink()
    cook_dir.rmdir()
    cook("ensemble")
    with caplog.at_level("INFO"):
        run_analyze(world.cfg(*SMALL, "analyses.angles.max_pairs=2"), run=fake_run())
    assert caplog.text.count("already done") == len(FIGURES) - 2
    redone = [line for line in caplog.text.splitlines() if "finished in" in line]
    assert sorted(line.split("analysis ")[1].split()[0] for line in redone) == ["angles", "calibration"]


def test_parameters_are_checked_before_anything_runs(world, fake_run):
    with pytest.raises(ConfigError, match=r"analyses\.landscape\.grid=1: expected a value in \[2, inf\]"):
        run_analyze(world.cfg("analyses.landscape.grid=1"), run=fake_run())
    with pytest.raises(ConfigError, match=r"analyses\.angles: unknown parameter\(s\) \['pairs'\]"):
        run_analyze(world.cfg("+analyses.angles.pairs=3"), run=fake_run())
    with pytest.raises(ConfigError, match=r"analyses\.angles\.max_pairs='many': expected a finite number"):
        run_analyze(world.cfg("analyses.angles.max_pairs=many"), run=fake_run())
    with pytest.raises(ConfigError, match=r"num_ingredients\.ks=7: expected one of all, powers_of_two or a list"):
        run_analyze(world.cfg("analyses.num_ingredients.ks=7"), run=fake_run())
    with pytest.raises(ConfigError, match=r"num_ingredients\.ks=\[1, 0\]: expected one of .* or a value in \[1, inf\]"):
        run_analyze(world.cfg("analyses.num_ingredients.ks=[1,0]"), run=fake_run())
    with pytest.raises(ConfigError, match="nothing selected in analyses"):
        run_analyze(world.cfg("analyses=[]"), run=fake_run())
    assert not (world.out / "report").exists()


def test_a_metric_outside_the_suite_is_one_clear_error(world, fake_run):
    with pytest.raises(ConfigError, match=r"'ImageNetX' is not in the evaluation suite"):
        run_analyze(world.cfg("analyses=[angles]", "analyses.angles.metric=ImageNetX"), run=fake_run())


def test_a_user_analysis_from_a_config_dir(world, monkeypatch, fake_run):
    monkeypatch.syspath_prepend(str(USER_REPO))
    monkeypatch.delitem(sys.modules, "my_analyses", raising=False)
    cfg = world.cfg("analysis_set=mine", config_dir=USER_REPO / "conf")
    run = fake_run()
    made = run_analyze(cfg, run=run)
    assert list(made) == ["calibration", "held_out_vs", "top_k_gain"]
    record = json.loads((made["held_out_vs"] / "analysis.json").read_text())
    assert record["target"] == "my_analyses.held_out_vs" and record["params"] == {"dataset": "ImageNetSketch",
                                                                                    "top": None}
    assert record["numbers"]["models"] == 5
    assert sorted(record["outputs"]) == ["held_out_vs.csv", "held_out_vs.pdf", "held_out_vs.png"]
    assert "analysis/held_out_vs/held_out_vs" in run.images
    gain = json.loads((made["top_k_gain"] / "analysis.json").read_text())
    best, soup = _rows(made["top_k_gain"] / "top_k_gain.csv")
    assert soup["ingredients"].count("+") == 1 and best["model"] == "best"
    assert gain["numbers"]["held_out_gain"] == pytest.approx(float(soup["held_out"]) - float(best["held_out"]))
    assert gain["numbers"]["dataset_gain"] == pytest.approx(float(soup["ImageNetSketch"]) - float(best["ImageNetSketch"]))
    assert run.summaries["analysis/top_k_gain/held_out_gain"] == gain["numbers"]["held_out_gain"]
    with pytest.raises(ConfigError, match=r"analyses\.held_out_vs\.top=0"):
        run_analyze(world.cfg("analysis_set=mine", "analyses.held_out_vs.top=0", config_dir=USER_REPO / "conf"),
                    run=fake_run())


def test_figures_tables_and_numbers_reach_an_offline_wandb_run(world, cook, recwarn):
    from soup_exp.tracking.offline_runs import read_offline_run

    cook("greedy")  # the greedy curve's rows leave the `draw` column empty: W&B must still take the table
    overrides = ["analyses=[num_ingredients]", "analyses.num_ingredients.ks=[1,2]",
                 "analyses.num_ingredients.draws=1", "logger.mode=offline"]
    made = run_analyze(world.cfg(*overrides))
    assert run_analyze(world.cfg(*overrides)) == made  # all done already: no second W&B run
    assert not [w for w in recwarn if "W&B" in str(w.message)], [str(w.message) for w in recwarn]
    (run_dir,) = (world.out / "wandb").glob("offline-run-*")
    logged = read_offline_run(run_dir)
    assert logged.job_type == "analyze" and logged.group == world.out.name
    assert [p.name.split("_")[0] for p in (run_dir / "files" / "media" / "images").rglob("*.png")] == ["num"]
    assert len(list((run_dir / "files" / "media" / "table").rglob("*.table.json"))) == 1
    record = json.loads((made["num_ingredients"] / "analysis.json").read_text())
    assert logged.summary["analysis/num_ingredients/ImageNet2p/best_individual"] == pytest.approx(
        record["numbers"]["ImageNet2p"]["best_individual"])


def test_tables_for_wandb_are_typed_per_column(tmp_path):
    from soup_exp.analyze import read_table
    from soup_exp.reporting.figures import save_data

    path = save_data(["name", "k", "draw"], [["7", 1, ""], ["ft_1", 2, 0]], tmp_path / "t")
    assert read_table(path) == (["name", "k", "draw"], [["7", 1.0, None], ["ft_1", 2.0, 0.0]])


@pytest.mark.slow
def test_every_analysis_on_a_users_pool_of_imported_checkpoints(world, tmp_path, fake_run):
    """A pool outside the experiment, as `soup-exp import` writes it: model_<i> folders, the LP
    init as model_0, hyperparameters only in sweep.drawn, no init_from, no zero-shot model."""
    import shutil

    pool = tmp_path / "imported"
    for index, run in enumerate(sorted((world.out / "ingredients").iterdir())):  # ft_0..ft_3, lp_init
        name = f"model_{(index + 1) % 5}"
        shutil.copytree(run, pool / name)
        info = json.loads((run / "ingredient.json").read_text())
        drawn = (info.get("sweep") or {}).get("drawn")
        record = {"name": name, "kind": info["kind"], "base_model": info["base_model"],
                  "sweep": {"kind": "release", "name": name, "index": None, "seed": None, "drawn": drawn}}
        (pool / name / "ingredient.json").write_text(json.dumps(record))
    shutil.rmtree(world.out / "ingredients")
    shutil.rmtree(world.out / "zeroshot")

    made = run_analyze(world.cfg(*SMALL, f"soup.pool={pool}"), run=fake_run())
    assert list(made) == list(FIGURES)
    records = {name: json.loads((folder / "analysis.json").read_text()) for name, folder in made.items()}
    assert records["landscape"]["numbers"]["origin"] == "model_0"  # the release's LP init
    assert records["angles"]["numbers"]["initialisation"] == "model_0"
    assert records["num_ingredients"]["numbers"]["pool"] == 5
    assert set(records["calibration"]["numbers"]["ece"]) == {f"model_{i}" for i in range(5)}
    for name, stems in FIGURES.items():
        assert all((made[name] / f"{stem}.{x}").is_file() for stem in stems for x in ("png", "pdf", "csv"))


class Preempted(Exception):
    pass


@pytest.mark.parametrize("name", ["angles", "num_ingredients"])
def test_an_interrupted_analysis_resumes_without_redoing_finished_work(world, cook, fake_run, monkeypatch, name):
    """Preempted at its second group of candidates, the analysis keeps what it finished: the
    rerun evaluates only the candidates it had not."""
    from soup_exp.analysis.suite import Suite

    cook("greedy")
    groups = []
    real = Suite._evaluate_group

    def group(self, items, datasets):
        groups.append([key for key, _ in items])
        if interrupt and len(groups) == 2:
            raise Preempted
        yield from real(self, items, datasets)

    monkeypatch.setattr(Suite, "_evaluate_group", group)
    own = [o for o in [*SMALL, "analyses.num_ingredients.ks=[1,2,3]"] if o.startswith(f"analyses.{name}.")]
    cfg = world.cfg(f"analyses=[{name}]", *own)
    interrupt = True
    with pytest.raises(Preempted):
        run_analyze(cfg, run=fake_run())
    folder = world.out / "report" / "analysis" / name
    assert (folder / ".partial.json").is_file() and not (folder / "analysis.json").exists()
    finished = set(groups[0])
    groups.clear()
    interrupt = False
    run_analyze(cfg, run=fake_run())
    again = [key for keys in groups for key in keys]
    assert again and not finished & set(again)
    assert (folder / "analysis.json").is_file() and not (folder / ".partial.json").exists()


def test_interrupted_greedy_ablations_rerun_only_the_unfinished_greedy_runs(world, fake_run, monkeypatch):
    from soup_exp.analysis import greedy_ablation

    runs = []
    real = greedy_ablation.greedy_soup

    def greedy(*args, state_file, **kwargs):
        runs.append(state_file.stem)
        if interrupt and len(runs) == 3:
            raise Preempted
        return real(*args, state_file=state_file, **kwargs)

    monkeypatch.setattr(greedy_ablation, "greedy_soup", greedy)
    cfg = world.cfg("analyses=[greedy_ablation]", *(o for o in SMALL if o.startswith("analyses.greedy_ablation.")))
    interrupt = True
    with pytest.raises(Preempted):
        run_analyze(cfg, run=fake_run())
    done, runs[:] = runs[:2], []
    interrupt = False
    run_analyze(cfg, run=fake_run())
    assert done == ["tolerance_0", "tolerance_0.01"] and runs == ["random_0", "random_1"]  # the third resumes


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))
