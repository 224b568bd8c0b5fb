"""Every primary config composes, alone and with every experiment overlay."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from soup_exp.stages.entry import STAGES, available_options, packaged_config_dir

PRIMARY = list(STAGES)
CONFIG_DIR = packaged_config_dir()
USER_REPO = Path(__file__).parent / "user_repo"


def available_experiments() -> list[str]:
    return available_options("experiment")


@pytest.mark.parametrize("stage", PRIMARY)
@pytest.mark.parametrize("experiment", [None, *available_experiments()])
def test_every_stage_composes_with_every_experiment(stage, experiment):
    overrides = [] if experiment is None else [f"experiment={experiment}"]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name=stage, overrides=overrides)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert resolved["stage"] == stage
    assert resolved["out_dir"].endswith(resolved["name"])
    if experiment is not None:
        assert resolved["name"] == experiment


def test_paths_follow_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("SOUP_DATA_DIR", str(tmp_path / "datasets"))
    monkeypatch.setenv("SOUP_OUTPUT_DIR", str(tmp_path / "runs"))
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="evaluate", overrides=["name=x"])
    assert cfg.data.roots.ImageNet == str(tmp_path / "datasets" / "imagenet")
    assert cfg.results_file == str(tmp_path / "runs" / "x" / "results.jsonl")


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "soup_exp.cli", *args], capture_output=True, text=True)


def test_help_lists_stages_and_experiments():
    result = _cli("--help")
    assert result.returncode == 0
    for stage in PRIMARY:
        assert stage in result.stdout
    for experiment in available_experiments():
        assert experiment in result.stdout


def test_unknown_stage_is_one_clear_message():
    result = _cli("bake")
    assert result.returncode == 2
    assert "unknown stage 'bake'" in result.stderr and "Traceback" not in result.stderr


def test_unknown_experiment_is_one_clear_message():
    result = _cli("soup", "experiment=nonexistent")
    assert result.returncode == 2
    assert "unknown experiment 'nonexistent'" in result.stderr
    assert "demo" in result.stderr and "Traceback" not in result.stderr


def test_module_entry_point_checks_experiment_too():
    result = subprocess.run(
        [sys.executable, "-m", "soup_exp.evaluate", "experiment=nonexistent"],
        capture_output=True, text=True,
    )
    assert result.returncode == 2 and "unknown experiment" in result.stderr


def test_output_dir_of_another_experiment_is_refused(tmp_path):
    from soup_exp.errors import OutputConflictError
    from soup_exp.stages.experiment import claim_output_dir

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        first = compose(config_name="evaluate", overrides=["name=shared", f"paths.output_dir={tmp_path}"])
        other = compose(
            config_name="evaluate",
            overrides=["name=shared", f"paths.output_dir={tmp_path}", "model=vit_b16"],
        )
    claim_output_dir(first)
    claim_output_dir(first)  # the same experiment may come back (resume)
    with pytest.raises(OutputConflictError, match="holds a different experiment"):
        claim_output_dir(other)


def test_pipeline_passes_each_stage_only_the_overrides_it_understands():
    from soup_exp.pipeline import overrides_for

    given = ["experiment=smoke", "recipes.greedy.tolerance=0.1", "pipeline.sweep_size=2",
             "train.lr=1e-4", "logger=disabled", "+hydra.job.env_set.X=1"]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        assert overrides_for("finetune", given) == [
            "experiment=smoke", "recipes.greedy.tolerance=0.1", "train.lr=1e-4", "logger=disabled",
            "+hydra.job.env_set.X=1"]
        assert overrides_for("soup", given) == [
            "experiment=smoke", "recipes.greedy.tolerance=0.1", "logger=disabled",
            "+hydra.job.env_set.X=1"]
        assert "pipeline.sweep_size=2" in overrides_for("pipeline", given)


def test_a_user_config_dir_adds_configs_and_shadows_packaged_ones(tmp_path):
    from pathlib import Path

    user_conf = Path(__file__).parent / "user_repo" / "conf"
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "greedy.yaml").write_text(
        "# @package recipes.greedy\n_target_: soup_exp.soups.greedy.greedy_recipe\nlabel: My greedy\ntolerance: 0.5\n")
    shadowed = _cli("soup", "--config-dir", str(tmp_path), "--cfg", "job")
    assert shadowed.returncode == 0, shadowed.stderr
    assert "label: My greedy" in shadowed.stdout and "tolerance: 0.5" in shadowed.stdout
    assert "uniform_recipe" in shadowed.stdout  # the packaged recipes are still there

    added = _cli("soup", f"--config-dir={user_conf}", "experiment=my_smoke", "--cfg", "job")
    assert added.returncode == 0, added.stderr
    assert "my_soups.top_k_soup" in added.stdout and "SketchCopy" in added.stdout
    unknown = _cli("soup", "experiment=my_smoke")
    assert unknown.returncode == 2 and "unknown experiment 'my_smoke'" in unknown.stderr
    missing = _cli("soup", "--config-dir", str(tmp_path / "nope"))
    assert missing.returncode == 2 and "no such directory" in missing.stderr


@pytest.mark.parametrize("stage", ["finetune", "soup", "evaluate", "analyze", "pipeline"])
def test_every_stage_that_does_heavy_work_takes_the_slurm_launcher(stage):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name=stage, overrides=["launcher=slurm", "hydra.launcher.partition=gpu"],
                      return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith("WatchedSlurmLauncher")
    assert cfg.hydra.launcher.partition == "gpu" and cfg.hydra.launcher.signal_delay_s > 0


def test_a_misspelled_plugin_is_one_line_listing_the_known_ones():
    result = _cli("soup", "recipes=[uniform,gredy]", "--dry-run")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("soup-exp soup: error: unknown recipes 'gredy'; available: ") and "greedy" in line


def test_a_recipe_file_without_its_package_line_is_one_line_naming_it(tmp_path):
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "mine.yaml").write_text("_target_: my_soups.top_k_soup\nlabel: Mine\nk: 2\n")
    result = _cli("soup", "--config-dir", str(tmp_path), "recipes=[uniform,mine]", "--dry-run")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert "_target_, k, label sit directly under recipes" in line and "_target_: my_soups.top_k_soup" in line
    assert "`# @package recipes.<name>`" in line


@pytest.mark.parametrize(("given", "said"), [
    ("analysis=[landscape,angles]", "analysis is now analyses (one file per analysis; presets in analysis_set/): "
                                    "write analyses=[landscape,angles]"),
    ("analysis.landscape.grid=3", "write analyses.landscape.grid=3"),
    ("recipe=paper", "recipe is now recipe_set (presets of recipes/): write recipe_set=paper"),
    ("analyses=paper", "'paper' is a preset of analyses: choose it with analysis_set=paper"),
    ("recipes=paper", "'paper' is a preset of recipes: choose it with recipe_set=paper"),
])
def test_an_old_group_spelling_is_one_line_with_the_new_one(given, said):
    from soup_exp.errors import ConfigError
    from soup_exp.stages.entry import check_experiment

    with pytest.raises(ConfigError, match=re.escape(said)):
        check_experiment([given], None)


@pytest.mark.parametrize(("files", "said"), [
    ({"analysis/mine.yaml": "# @package analysis.mine\n_target_: my.fn\n"},
     "analysis/: the config group analysis/ is now analyses/"),
    ({"recipe/mine.yaml": "# @package _global_\ndefaults:\n  - /recipes: [uniform]\n"},
     "recipe/: the config group recipe/ is now recipe_set/"),
    ({"analyses/mine.yaml": "# @package analysis.mine\n_target_: my.fn\n"},
     "analyses/mine.yaml, line 1: the config group analysis is now analyses"),
    ({"analyses/mine.yaml": "# @package _global_\ndefaults:\n  - /analysis: [calibration]\n"},
     "analyses/mine.yaml, line 3: the config group analysis is now analyses"),
    ({"experiment/x.yaml": "# @package _global_\ndefaults:\n  - override /recipe: mine\n"},
     "write '- override /recipe_set: mine'"),
])
def test_a_user_repo_with_the_old_group_names_is_one_line_saying_the_new_ones(tmp_path, files, said):
    from soup_exp.errors import ConfigError
    from soup_exp.stages.entry import check_experiment

    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    with pytest.raises(ConfigError, match=re.escape(said)):
        check_experiment([], tmp_path)


def test_the_user_repo_and_the_packaged_tree_use_only_the_new_names():
    from soup_exp.stages.entry import check_group_names

    check_group_names(CONFIG_DIR)
    check_group_names(USER_REPO / "conf")


def test_an_old_spelling_on_the_command_line_is_one_line():
    result = _cli("analyze", "analysis=[landscape]", "--dry-run")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.endswith("write analyses=[landscape]")
