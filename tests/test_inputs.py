"""Inputs made before the run: the data stage runs what ``data.prepare`` and ``model.prepare``
name, and nothing else makes data. The demo (soup_exp/demo) is an application of this; the
runtime knows nothing of it."""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

import soup_exp
from soup_exp.data.checker import check_datasets
from soup_exp.data.layout import DatasetLayoutError
from soup_exp.data.registry import build_train_samples, class_space
from soup_exp.errors import ConfigError
from soup_exp.evaluation.evaluator import build_evaluator
from soup_exp.evaluation.settings import EvalSettings
from soup_exp.inputs import input_steps, prepare_inputs
from soup_exp.stages.entry import packaged_config_dir

PACKAGE = Path(soup_exp.__file__).parent
DEMO = PACKAGE / "demo"


def compose_in(tmp_path: Path, stage: str, *overrides: str):
    with initialize_config_dir(config_dir=str(packaged_config_dir()), version_base="1.3"):
        return compose(config_name=stage, overrides=[
            "experiment=smoke", f"paths.cache_dir={tmp_path / 'cache'}", f"paths.output_dir={tmp_path / 'out'}",
            f"paths.data_dir={tmp_path / 'data'}", *overrides])


def runtime_files() -> list[Path]:
    return [p for p in sorted(PACKAGE.rglob("*")) if p.is_file() and DEMO not in p.parents
            and "__pycache__" not in p.parts and p.suffix in (".py", ".json", ".md", ".txt")]


def test_the_runtime_never_mentions_the_synthetic_data():
    offenders = [str(p.relative_to(PACKAGE)) for p in runtime_files() if "synthetic" in p.read_text().lower()]
    assert offenders == []
    assert len(runtime_files()) > 50  # the walk found the package


def test_no_runtime_module_imports_the_demo():
    importers = []
    for path in runtime_files():
        if path.suffix != ".py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(n == "soup_exp.demo" or n.startswith("soup_exp.demo.") for n in names):
                importers.append(str(path.relative_to(PACKAGE)))
    assert importers == []


def test_looking_up_the_demo_data_on_an_empty_cache_creates_no_file(tmp_path):
    """The evaluator, the training samples and the checker only read: before the data stage
    ran they fail (or report) naming the missing root, and the disk is as it was."""
    cfg = compose_in(tmp_path, "evaluate")
    classes = class_space(cfg.data)
    with pytest.raises(DatasetLayoutError, match="synthetic-imagenet-smoke/imagenet does not exist"):
        build_evaluator(EvalSettings.from_config(cfg), preprocess=None, classes=classes)
    with pytest.raises(DatasetLayoutError, match="does not exist"):
        build_train_samples(cfg.data, classes)
    reports = check_datasets(cfg.data, list(cfg.eval.datasets))
    assert {r.status for r in reports} == {"missing"}
    assert list(tmp_path.rglob("*")) == []


def test_a_stage_before_the_data_stage_names_the_step_that_makes_its_data(tmp_path):
    from soup_exp.stages.preflight import require_roots

    with pytest.raises(DatasetLayoutError) as caught:
        require_roots(compose_in(tmp_path, "finetune"), ["ImageNet2p"])
    message = str(caught.value)
    assert message.startswith("dataset root(s) not found: ImageNet2p (")
    assert "data.prepare (soup_exp.demo.synthetic.ensure_synthetic) makes them" in message
    assert "soup-exp pipeline pipeline.stages=[data]" in message
    with pytest.raises(DatasetLayoutError, match=r"not found: ImageNet2p .*paths\.data_dir="):
        require_roots(compose_in(tmp_path, "finetune", "data=imagenet", "model=vit_b32"), ["ImageNet2p"])
    assert list(tmp_path.rglob("*")) == []


def test_the_pipeline_checks_pass_when_its_data_stage_makes_the_roots(tmp_path):
    from soup_exp.pipeline import check_pipeline

    with initialize_config_dir(config_dir=str(packaged_config_dir()), version_base="1.3"):
        base = ["experiment=smoke", f"paths.cache_dir={tmp_path / 'cache'}", f"paths.output_dir={tmp_path / 'out'}"]
        check_pipeline(compose(config_name="pipeline", overrides=base), base)
        later = [*base, "pipeline.stages=[evaluate]"]
        with pytest.raises(DatasetLayoutError, match="run the data stage first"):
            check_pipeline(compose(config_name="pipeline", overrides=later), later)
    assert list(tmp_path.rglob("*")) == []


@pytest.fixture
def user_steps(tmp_path, monkeypatch) -> Path:
    """A user's module of steps, importable as ``my_inputs``; each call appends to calls.txt."""
    log = tmp_path / "calls.txt"
    (tmp_path / "my_inputs.py").write_text(textwrap.dedent(f"""
        def make_data(data_cfg, *, size: int = 1):
            with open({str(log)!r}, "a") as f:
                f.write(f"data {{data_cfg['root']}} {{size}}\\n")

        def make_model(model_cfg):
            with open({str(log)!r}, "a") as f:
                f.write(f"model {{model_cfg['name']}}\\n")
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    return log


def test_the_data_stage_runs_the_named_steps_data_first(user_steps):
    cfg = {"model": {"name": "m", "prepare": {"_target_": "my_inputs.make_model"}},
           "data": {"root": "/r", "prepare": {"_target_": "my_inputs.make_data", "size": 3}}}
    assert [(section, step.target) for section, step in input_steps(cfg)] == [
        ("data", "my_inputs.make_data"), ("model", "my_inputs.make_model")]
    prepare_inputs(cfg)
    assert user_steps.read_text().splitlines() == ["data /r 3", "model m"]
    prepare_inputs({"data": {"prepare": None}, "model": {}})  # nothing configured: nothing runs
    assert len(user_steps.read_text().splitlines()) == 2


@pytest.mark.parametrize(("prepare", "message"), [
    ({"_target_": "my_inputs.make_dta"}, "data.prepare._target_='my_inputs.make_dta' cannot be imported"),
    ({"_target_": "my_inputs.make_data", "sise": 3}, "data.prepare: unknown parameter(s) ['sise']"),
    ({"_target_": "my_inputs.make_data", "size": "big"}, "data.prepare.size='big': expected a finite number"),
    ({"size": 3}, "data.prepare has no _target_"),
    ("my_inputs.make_data", "data.prepare='my_inputs.make_data': expected a mapping whose _target_"),
])
def test_a_malformed_step_is_an_error_naming_it_and_nothing_runs(user_steps, prepare, message):
    with pytest.raises(ConfigError) as caught:
        prepare_inputs({"data": {"root": "/r", "prepare": prepare}})
    assert str(caught.value).startswith(message)
    assert not user_steps.exists()


def test_the_demo_configs_name_the_demo_steps(tmp_path):
    cfg = compose_in(tmp_path, "pipeline")
    assert [(section, step.target) for section, step in input_steps(cfg)] == [
        ("data", "soup_exp.demo.synthetic.ensure_synthetic"), ("model", "soup_exp.demo.pretrain.ensure_pretrained")]
    assert cfg.model.pretrain.captions == str(tmp_path / "cache" / "synthetic-imagenet-smoke" / "pretrain" / "captions.csv")
    real = compose_in(tmp_path, "pipeline", "data=imagenet", "model=vit_b32")
    assert input_steps(real) == []
