import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from eval_testkit import make_dataset
from omegaconf import OmegaConf

from soup_exp.artifacts import Ensemble
from soup_exp.data import registry
from soup_exp.data.base import LogitProjection
from soup_exp.errors import ConfigError
from soup_exp.evaluate import discover_models, run_evaluate
from soup_exp.evaluation.evaluator import Evaluator
from soup_exp.models import build_classifier, load_classifier
from soup_exp.utils.io import atomic_save_safetensors, atomic_write_json

SUITE = ["ImageNet2p", "ImageNet", "ImageNetV2", "ImageNetSketch", "ImageNetR", "ObjectNet", "ImageNetA"]
PROJECTIONS = {"ImageNetR": (LogitProjection.select([1, 4, 6]), 3),
               "ImageNetA": (LogitProjection.select([0, 2, 3, 9]), 4),
               "ObjectNet": (LogitProjection(((0, 5), (2,), (7, 8))), 3)}


@pytest.fixture
def experiment(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model_cfg = {"source": "open_clip", "name": "soup-tiny-vit", "pretrained": None,
                 "cache_dir": str(tmp_path / "pretrained")}
    out = tmp_path / "out"
    cfg = OmegaConf.create({
        "name": "t", "stage": "evaluate", "check_data": False, "models": "all",
        "device": "cpu", "precision": "bf16", "num_workers": 0, "progress": False,
        "out_dir": str(out), "zeroshot_dir": str(out / "zeroshot"), "ingredients_dir": str(out / "ingredients"),
        "soups_dir": str(out / "soups"), "results_file": str(out / "results.jsonl"),
        "soup": {"pool": str(out / "ingredients")},
        "data": {"classes": list(range(10))},
        "model": model_cfg,
        "eval": {"datasets": SUITE, "batch_size": 4, "num_workers": None, "read_threads": 2,
                 "precision": "fp32", "ensemble_logits": "projected", "models_per_pass": 2,
                 "force": False, "cache": {"enabled": True, "dir": str(tmp_path / "cache")}},
        "logger": {"mode": "disabled", "project": "soup-exp", "dir": str(out)},
    })
    datasets = {}
    for k, name in enumerate(SUITE):
        projection, targets = PROJECTIONS.get(name, (None, 10))
        spec = [((k + i) % 10, (k * i) % targets) for i in range(6)]
        datasets[name] = make_dataset(tmp_path / "data", name, spec, targets, projection,
                                      border_crop=2 if name == "ObjectNet" else 0)
    monkeypatch.setattr(registry, "build_eval_dataset", lambda name, data_cfg, classes: datasets[name])

    skeleton, _ = build_classifier(model_cfg, 10)

    def write_model(directory, info_name, info, scale):
        state = {k: v + scale * torch.randn_like(v) for k, v in skeleton.state_dict().items()}
        atomic_save_safetensors(state, directory / "model.safetensors")
        atomic_write_json(directory / info_name, info)
        return state

    states = {}
    states["zeroshot"] = write_model(out / "zeroshot", "ingredient.json", {"name": "zeroshot", "kind": "zeroshot"}, 1.0)
    for i in range(3):
        states[f"ft_{i}"] = write_model(out / "ingredients" / f"run{i}", "ingredient.json",
                                        {"name": f"ft_{i}", "kind": "finetune"}, 1.0)
    (out / "ingredients" / "unfinished").mkdir()
    (out / "ingredients" / "unfinished" / "run.json").write_text("{}")
    write_model(out / "soups" / "uniform", "soup.json",
                {"name": "uniform_soup", "recipe": "uniform", "kind": "soup", "ingredients": ["ft_0", "ft_1", "ft_2"]}, 1.0)
    atomic_write_json(out / "soups" / "ensemble" / "soup.json",
                      {"name": "ensemble", "recipe": "ensemble", "kind": "ensemble",
                       "ingredients": ["ft_0", "ft_1", "ft_2"], "members": ["ft_0", "ft_1", "ft_2"]})
    return {"cfg": cfg, "datasets": datasets, "out": out, "model_cfg": model_cfg}


def _expected(experiment):
    """The same numbers computed without the stage: load each model, evaluate, and build
    the ensemble by hand as the authors' ensemble branch did (members' projected logits
    averaged, then argmax)."""
    out, model_cfg = experiment["out"], experiment["model_cfg"]
    _, backbone = build_classifier(model_cfg, 10)
    evaluator = Evaluator(list(experiment["datasets"].values()), backbone.preprocess_val, progress=False)
    paths = {"zeroshot": out / "zeroshot", "uniform_soup": out / "soups" / "uniform",
             **{f"ft_{i}": out / "ingredients" / f"run{i}" for i in range(3)}}
    models = {name: load_classifier(path, model_cfg, 10) for name, path in paths.items()}
    expected = evaluator.evaluate(models)
    ensemble = {}
    for name in SUITE:
        dataset = evaluator.dataset(name)
        projected = sum(dataset.project(evaluator.logits(models[f"ft_{i}"], name)) for i in range(3)) / 3
        ensemble[name] = (projected.argmax(1) == dataset.targets).sum().item() / len(dataset)
    ensemble["avg_shifts"] = sum(ensemble[s] for s in SUITE[2:]) / 5
    expected["ensemble"] = ensemble
    return expected


def test_stage_writes_one_row_per_model_and_resumes(experiment):
    from soup_exp.tracking.offline_runs import read_offline_run, run_dirs

    cfg = experiment["cfg"]
    cfg.logger.mode = "offline"
    rows = run_evaluate(cfg)
    by_name = {r["name"]: r for r in rows}
    assert set(by_name) == {"zeroshot", "ft_0", "ft_1", "ft_2", "uniform_soup", "ensemble"}
    assert [by_name[n]["kind"] for n in ("zeroshot", "ft_0", "uniform_soup", "ensemble")] == \
        ["zeroshot", "finetune", "soup", "ensemble"]
    assert by_name["uniform_soup"]["recipe"] == "uniform" and by_name["ensemble"]["num_ingredients"] == 3
    expected = _expected(experiment)
    for name, accuracies in expected.items():
        for key, value in accuracies.items():
            assert by_name[name][key] == pytest.approx(value, abs=1e-12), (name, key)
    lines = [json.loads(line) for line in Path(cfg.results_file).read_text().splitlines()]
    assert {row["name"] for row in lines} == set(by_name)
    assert all("weights" in row["meta"] and row["path"] for row in lines)

    (first,) = run_dirs(experiment["out"] / "wandb")
    assert read_offline_run(first).summary["models_evaluated"] == 6

    assert run_evaluate(cfg) == []  # everything up to date
    assert run_dirs(experiment["out"] / "wandb") == [first]  # and no W&B run for it

    weights = experiment["out"] / "ingredients" / "run1" / "model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    again = run_evaluate(cfg)
    assert sorted(r["name"] for r in again) == ["ensemble", "ft_1"]  # the ensemble uses ft_1 too
    assert len(run_dirs(experiment["out"] / "wandb")) == 2

    cfg.eval.force = True
    cfg.models = ["ft_0"]
    assert [r["name"] for r in run_evaluate(cfg)] == ["ft_0"]


def test_subset_of_datasets_merges_into_the_existing_row(experiment):
    cfg = experiment["cfg"]
    cfg.models = ["ft_2"]
    cfg.eval.datasets = ["ImageNet2p"]
    first = run_evaluate(cfg)[0]
    assert "ImageNet" not in first and "avg_shifts" not in first
    cfg.eval.datasets = SUITE
    full = run_evaluate(cfg)[0]
    assert full["ImageNet2p"] == first["ImageNet2p"] and "avg_shifts" in full
    cfg.eval.datasets = ["ImageNet"]
    assert run_evaluate(cfg) == []


def test_discovery_and_selection_errors(experiment):
    cfg = experiment["cfg"]
    names = [e.name for e in discover_models(cfg)]
    assert names == ["zeroshot", "ft_0", "ft_1", "ft_2", "ensemble", "uniform_soup"]
    external = experiment["out"] / "ingredients" / "run0"
    atomic_write_json(experiment["out"] / "soups" / "ext" / "soup.json",
                      {"name": "ext", "kind": "ensemble", "members": ["other_pool_0", 1],
                       "ingredients": ["other_pool_0", "other_pool_1"],
                       "ingredient_paths": [str(external), str(external / "model.safetensors")]})
    ext = {e.name: e for e in discover_models(cfg)}["ext"]
    assert isinstance(ext, Ensemble) and ext.members == (external / "model.safetensors",) * 2
    cfg.models = ["nope"]
    with pytest.raises(ConfigError, match="no model named"):
        run_evaluate(cfg)
    atomic_write_json(experiment["out"] / "soups" / "bad" / "soup.json", {"name": "bad", "members": ["ft_9"]})
    cfg.models = "all"
    with pytest.raises(Exception, match="ensemble member 'ft_9'"):
        run_evaluate(cfg)


def test_models_come_from_soup_pool_as_the_soup_stage_reads_it(experiment):
    """An experiment souping a pool kept elsewhere evaluates that pool, not ingredients_dir."""
    cfg, out = experiment["cfg"], experiment["out"]
    (out / "ingredients").rename(out / "shared")
    cfg.soup.pool = str(out / "shared" / "run*")
    assert [e.name for e in discover_models(cfg)] == ["zeroshot", "ft_0", "ft_1", "ft_2", "ensemble", "uniform_soup"]
    cfg.soup.pool = [str(out / "shared" / "run2"), str(out / "shared" / "run[01]")]
    assert [e.name for e in discover_models(cfg)][:4] == ["zeroshot", "ft_2", "ft_0", "ft_1"]


def test_uncached_stage_matches(experiment):
    cfg = experiment["cfg"]
    cfg.eval.cache.enabled = False
    cfg.models = ["ft_0"]
    row = run_evaluate(cfg)[0]
    assert not (experiment["out"].parent / "cache").exists()
    assert row["ImageNet"] == pytest.approx(_expected(experiment)["ft_0"]["ImageNet"], abs=1e-12)


@pytest.mark.parametrize("mode, verify", [(True, False), ("verify", True)])
def test_check_data_runs_the_checker_instead(experiment, monkeypatch, capsys, mode, verify):
    from soup_exp.data import checker

    calls = []

    def fake_check(data_cfg, names, verify=False, num_threads=8):
        calls.append((list(names), verify))
        return [checker.DatasetReport(n, f"/data/{n}", "ok", images=1) for n in names]

    monkeypatch.setattr(checker, "check_datasets", fake_check)
    cfg = experiment["cfg"]
    cfg.check_data = mode
    reports = run_evaluate(cfg)
    assert calls == [(SUITE, verify)]
    assert [r["name"] for r in reports] == SUITE and not os.path.exists(cfg.results_file)
    assert "| ImageNetA | ok |" in capsys.readouterr().out
    monkeypatch.setattr(checker, "check_datasets", lambda *a, **k: [checker.DatasetReport("ImageNetA", "/x", "missing", message="no folder /x")])
    with pytest.raises(checker.DatasetLayoutError, match=r"check failed for ImageNetA \(missing\)"):
        run_evaluate(cfg)
    assert capsys.readouterr().out.count("no folder /x") == 1  # said once, under the table


def test_ensemble_of_models_evaluated_now_is_scored_from_their_passes(experiment, monkeypatch):
    import soup_exp.evaluate as stage

    reread = []
    from_files = stage.ensemble_hits
    monkeypatch.setattr(stage, "ensemble_hits", lambda *args, **kw: reread.append(1) or from_files(*args, **kw))
    cfg = experiment["cfg"]
    first = {r["name"]: r for r in run_evaluate(cfg)}
    assert reread == []  # all three members were evaluated in this run (over two passes)
    expected = _expected(experiment)["ensemble"]
    assert {k: first["ensemble"][k] for k in expected} == pytest.approx(expected, abs=1e-12)

    weights = experiment["out"] / "ingredients" / "run1" / "model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    again = {r["name"]: r for r in run_evaluate(cfg)}
    assert reread == [1]  # ft_0 and ft_2 were not evaluated now: the ensemble reads its members
    assert {k: again["ensemble"][k] for k in expected} == {k: first["ensemble"][k] for k in expected}


def test_per_image_hits_are_kept_beside_the_results_and_follow_their_rows(experiment):
    """Every row's datasets have their bits (the ensemble's from its members' passes), equal
    to a hand count of the argmax; a model evaluated on one dataset more keeps the others',
    and a dropped row takes its bits along."""
    from soup_exp.artifacts.correctness import correctness_path, matching_hits, read_hits

    cfg = experiment["cfg"]
    rows = {r["name"]: r for r in run_evaluate(cfg)}
    path = correctness_path(cfg.results_file)
    assert path.name == "results.correct.safetensors" and path.parent == experiment["out"]
    hits = read_hits(path)
    assert set(hits) == set(rows)
    for name, row in rows.items():
        matched = matching_hits(row, hits[name])
        assert set(matched) == set(SUITE), name
        assert {d: bits.mean() for d, bits in matched.items()} == pytest.approx({d: row[d] for d in SUITE}, abs=1e-12)
    expected = _expected(experiment)["ensemble"]
    assert {d: float(hits["ensemble"][d].bits.mean()) for d in SUITE} == pytest.approx(
        {d: expected[d] for d in SUITE}, abs=1e-12)

    cfg.models, cfg.eval.datasets, cfg.eval.force = ["ft_2"], ["ImageNet"], True
    run_evaluate(cfg)
    again = read_hits(path)
    assert set(again["ft_2"]) == set(SUITE)
    assert all((again["ft_2"][d].bits == hits["ft_2"][d].bits).all() for d in SUITE)

    shutil.rmtree(experiment["out"] / "ingredients" / "run1")
    shutil.rmtree(experiment["out"] / "soups" / "ensemble")
    cfg.models, cfg.eval.datasets, cfg.eval.force = "all", SUITE, False
    run_evaluate(cfg)
    assert set(read_hits(path)) == set(rows) - {"ft_1", "ensemble"}
