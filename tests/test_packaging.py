"""soup-exp as users install it: a wheel in a fresh environment, run from an empty folder,
extended from the user's own repository (tests/user_repo: a recipe, a dataset, an experiment)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
USER_REPO = Path(__file__).parent / "user_repo"


def test_every_package_is_listed_for_the_wheel():
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = {".".join(p.parent.relative_to(REPO).parts)
               for top in ("soup_exp", "hydra_plugins") for p in (REPO / top).rglob("__init__.py")}
    assert on_disk | {"soup_exp.conf"} == listed


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A new venv holding only the built wheel; its dependencies come from the test venv."""
    work = tmp_path_factory.mktemp("wheel")
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(work / "dist"),
                            str(REPO)], capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = (work / "dist").glob("soup_exp-*.whl")
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = Path(subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    # the test venv's site-packages for torch & co.; its editable soup_exp finder is a .pth
    # there, which a path added this way does not run, so only the wheel's copy is importable
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install",
                              "-q", "--no-deps", str(wheel)], capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-3000:]
    return venv


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOUP_")}
    return {**env, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "HOME": str(home),
            "PYTHONPATH": str(USER_REPO)}  # where the user's recipe module lives


@pytest.mark.slow
def test_wheel_carries_the_configs_and_nothing_of_the_checkout(installed, tmp_path):
    (wheel,) = (installed.parent / "dist").glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "soup_exp/conf/soup.yaml" in names and "soup_exp/conf/recipes/greedy.yaml" in names
    assert "soup_exp/reference/model-soups-vitb32/hparam_info.json" in names
    result = subprocess.run([str(installed / "bin" / "python"), "-c",
                             "import soup_exp, soup_exp.stages.entry as e; print(soup_exp.__file__); "
                             "print(e.packaged_config_dir())"], cwd=tmp_path, capture_output=True, text=True)
    module, conf = result.stdout.split()
    assert str(installed) in module and str(installed) in conf and str(REPO) not in result.stdout


@pytest.fixture(scope="module")
def user_run(installed, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """`soup-exp pipeline` from an empty folder with the user's config dir."""
    cwd = tmp_path_factory.mktemp("empty")
    result = subprocess.run(
        [str(installed / "bin" / "soup-exp"), "pipeline", "--config-dir", str(USER_REPO / "conf"),
         "experiment=my_smoke"], cwd=cwd, env=_env(cwd), capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-6000:]
    return cwd / "outputs" / "my_smoke", result


@pytest.mark.slow
def test_installed_pipeline_runs_from_an_empty_folder(user_run):
    out, result = user_run
    assert (out / "report" / "table.md").is_file() and "finished in" in result.stdout
    soup = json.loads((out / "soups" / "uniform" / "soup.json").read_text())
    assert soup["code_version"] == "0.1.0"  # an installed copy never asks git about its parent folder


@pytest.mark.slow
def test_a_user_recipe_is_cooked_evaluated_tabled_and_plotted(user_run):
    out, _ = user_run
    soup = json.loads((out / "soups" / "top_k" / "soup.json").read_text())
    assert soup["recipe"] == "top_k" and soup["label"] == "Top-k soup" and len(soup["ingredients"]) == 2
    assert soup["params"] == {"k": 2}
    rows = {r["name"]: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    assert rows["top_k"]["kind"] == "soup" and 0 <= rows["top_k"]["ImageNet"] <= 1
    assert "| Top-k soup (2 models) |" in (out / "report" / "table.md").read_text()
    plotted = {r["name"]: r for r in csv.DictReader((out / "report" / "figures" / "figure1.csv").open())}
    assert plotted["top_k"]["label"] == "Top-k soup"
    assert not (out / "soups" / "learned_by_layer").exists()  # not selected by recipe_set=mine


@pytest.mark.slow
def test_a_user_dataset_is_evaluated_and_tabled(user_run):
    out, _ = user_run
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    for row in rows:
        assert row["SketchCopy"] == row["ImageNetSketch"], row["name"]  # same images, same model
    header = (out / "report" / "table.md").read_text().splitlines()[0]
    assert header.endswith("| Avg shifts | SketchCopy |")
