"""The evaluate stage never mixes data versions, never records a broken model, and turns
damaged inputs into one-line errors; a torn results line is skipped and repaired."""

from __future__ import annotations

import json
import os
import signal
import stat
import warnings
from pathlib import Path

import pytest
import torch
from child_process import kill_before_commit, run_in_child
from eval_testkit import make_dataset
from omegaconf import OmegaConf
from stage_errors import stage_error

from soup_exp.data import registry
from soup_exp.evaluate import NonFiniteModelError, run_evaluate
from soup_exp.models import build_classifier
from soup_exp.utils import io
from soup_exp.utils.io import atomic_save_safetensors, atomic_write_json

MODEL = {"source": "open_clip", "name": "soup-tiny-vit", "pretrained": None}
NAMES = ["ImageNet2p", "ImageNet"]


@pytest.fixture
def experiment(tmp_path, monkeypatch):
    """Two fine-tunes and two datasets that tests may swap for other versions."""
    torch.manual_seed(0)
    out = tmp_path / "out"
    cfg = OmegaConf.create({
        "name": "t", "stage": "evaluate", "check_data": False, "models": "all", "device": "cpu",
        "precision": "bf16", "num_workers": 0, "progress": False, "out_dir": str(out),
        "zeroshot_dir": str(out / "zeroshot"), "ingredients_dir": str(out / "ingredients"),
        "soup": {"pool": str(out / "ingredients")},
        "soups_dir": str(out / "soups"), "results_file": str(out / "results.jsonl"),
        "data": {"classes": list(range(10))}, "model": {**MODEL, "cache_dir": str(tmp_path / "pretrained")},
        "eval": {"datasets": NAMES, "batch_size": 4, "num_workers": None, "read_threads": 2,
                 "precision": "fp32", "ensemble_logits": "projected", "models_per_pass": 2, "force": False,
                 "cache": {"enabled": True, "dir": str(tmp_path / "cache")}},
        "logger": {"mode": "disabled", "project": "soup-exp", "dir": str(out)},
    })
    datasets = {name: make_dataset(tmp_path / "data", name, [(i, i % 10) for i in range(6)], 10) for name in NAMES}
    monkeypatch.setattr(registry, "build_eval_dataset", lambda name, data_cfg, classes: datasets[name])
    skeleton, _ = build_classifier(cfg.model, 10)
    for i in range(2):
        run = out / "ingredients" / f"run{i}"
        atomic_save_safetensors({k: v + torch.randn_like(v) for k, v in skeleton.state_dict().items()},
                                run / "model.safetensors")
        atomic_write_json(run / "ingredient.json", {"name": f"ft_{i}", "kind": "finetune"})
    return {"cfg": cfg, "datasets": datasets, "out": out, "tmp": tmp_path}


def _rows(experiment) -> dict[str, dict]:
    lines = Path(experiment["cfg"].results_file).read_text().splitlines()
    return {row["name"]: row for row in map(json.loads, lines)}


def test_rows_follow_the_data_they_were_measured_on(experiment):
    cfg, datasets, tmp = experiment["cfg"], experiment["datasets"], experiment["tmp"]
    assert len(run_evaluate(cfg)) == 2
    assert run_evaluate(cfg) == []
    first = datasets["ImageNet"].paths[0]  # an image replaced in place
    os.utime(first, ns=(os.stat(first).st_atime_ns, os.stat(first).st_mtime_ns + 10**9))
    assert len(run_evaluate(cfg)) == 2
    datasets["ImageNet"] = make_dataset(tmp / "data_v2", "ImageNet", [(i, i % 10) for i in range(6)], 10)
    assert len(run_evaluate(cfg)) == 2  # another data root with the same names
    datasets["ImageNet"].samples = datasets["ImageNet"].samples[:5]  # a file fewer
    assert len(run_evaluate(cfg)) == 2
    datasets["ImageNet"].samples = [(p, (t + 1) % 10) for p, t in datasets["ImageNet"].samples]  # relabelled
    rows = run_evaluate(cfg)
    assert len(rows) == 2 and all(r["meta"]["datasets"]["ImageNet"] == rows[0]["meta"]["datasets"]["ImageNet"]
                                  for r in rows)
    assert run_evaluate(cfg) == []


def test_a_model_with_nan_weights_keeps_its_old_row(experiment):
    cfg = experiment["cfg"]
    run_evaluate(cfg)
    before = _rows(experiment)
    weights = experiment["out"] / "ingredients" / "run1" / "model.safetensors"
    from safetensors.torch import load_file

    state = load_file(str(weights))
    state["head.weight"][0, 0] = float("nan")
    atomic_save_safetensors(state, weights)
    with pytest.raises(NonFiniteModelError, match=r"run1/model.safetensors: tensor 'head.weight' has NaN"):
        run_evaluate(cfg)
    assert _rows(experiment)["ft_1"] == before["ft_1"]


def test_a_truncated_weights_file_is_named(experiment, capsys):
    weights = experiment["out"] / "ingredients" / "run0" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:300])
    err = stage_error(experiment["cfg"], run_evaluate, capsys)
    assert f"{weights}: not a readable safetensors file" in err


@pytest.mark.parametrize("content, expected", [('{"name": "uniform", ', " is not valid JSON"),
                                               ('"uniform"', " must hold a JSON object"),
                                               ('{"name": "../../x"}', ": name '../../x' is not a valid name")])
def test_a_damaged_soup_json_is_named(experiment, capsys, content, expected):
    soup = experiment["out"] / "soups" / "uniform" / "soup.json"
    soup.parent.mkdir(parents=True)
    soup.write_text(content)
    assert f"{soup}{expected}" in stage_error(experiment["cfg"], run_evaluate, capsys)


@pytest.mark.parametrize("setting, value", [("batch_size", 0), ("models_per_pass", -1), ("force", "yes")])
def test_eval_settings_are_checked_first(experiment, capsys, setting, value):
    experiment["cfg"].eval[setting] = value
    assert f"eval.{setting}={value!r}: expected" in stage_error(experiment["cfg"], run_evaluate, capsys)
    assert not Path(experiment["cfg"].results_file).exists()


def test_a_non_numeric_accuracy_is_named(experiment, capsys):
    results = Path(experiment["cfg"].results_file)
    results.write_text('{"name": "ft_0", "kind": "finetune", "ImageNet": "72%"}\n')
    err = stage_error(experiment["cfg"], run_evaluate, capsys)
    assert f"{results}, line 1: ImageNet='72%' in row 'ft_0' is not an accuracy" in err


def test_a_list_typed_metrics_is_refused_before_anything_is_evaluated(experiment, capsys):
    """Issue 25 item 17: it used to fail at the first row's write, after the whole pass."""
    record = experiment["out"] / "ingredients" / "run1" / "ingredient.json"
    atomic_write_json(record, {"name": "ft_1", "kind": "finetune", "metrics": ["ImageNet", 0.7]})
    err = stage_error(experiment["cfg"], run_evaluate, capsys)
    assert f"{record}: metrics must be an object" in err
    assert not Path(experiment["cfg"].results_file).exists()


def test_rows_of_deleted_models_are_dropped_and_said(experiment, caplog):
    """Issue 25 item 4: a model whose directory is gone loses its row (so the report's
    table no longer names it); rows of models still found, or with no path, stay."""
    import shutil

    from soup_exp.artifacts.results import ResultsStore
    from soup_exp.evaluate import discover_models, drop_rows_of_deleted_models

    cfg, out = experiment["cfg"], experiment["out"]
    store = ResultsStore(cfg.results_file)
    for name, path in [("ft_0", out / "ingredients" / "run0"), ("ft_1", out / "ingredients" / "run1"),
                       ("greedy", out / "soups" / "greedy"), ("published", None),
                       ("ft_old", out / "elsewhere" / "run0")]:
        store.upsert({"name": name, "kind": "finetune", "ImageNet": 0.5, **({"path": str(path)} if path else {})})
    shutil.rmtree(out / "ingredients" / "run1")
    with caplog.at_level("WARNING", logger="soup_exp.evaluate"):
        assert drop_rows_of_deleted_models(store, discover_models(cfg)) == ["ft_1", "greedy", "ft_old"]
    assert [r["name"] for r in store.rows()] == ["ft_0", "published"]
    assert "dropped the result rows of 3 models no longer in the experiment: ft_1, greedy, ft_old" in caplog.text
    assert drop_rows_of_deleted_models(store, discover_models(cfg)) == []
    store.upsert({"name": "ft_1", "kind": "finetune", "ImageNet": 0.9, "path": str(out / "ingredients" / "run1")})
    run_evaluate(cfg)  # the stage does it too, before evaluating
    assert sorted(_rows(experiment)) == ["ft_0", "published"]


def test_a_torn_last_line_is_skipped_then_repaired(experiment):
    cfg = experiment["cfg"]
    cfg.models = ["ft_0"]
    run_evaluate(cfg)
    results = Path(cfg.results_file)
    results.write_bytes(results.read_bytes() + b'{"name": "ft_1", "kind": "finetune", "Imag')
    cfg.models = "all"
    with pytest.warns(UserWarning, match=r"results.jsonl, line 2: an incomplete last line"):
        rows = run_evaluate(cfg)
    assert [r["name"] for r in rows] == ["ft_1"]
    assert list(_rows(experiment)) == ["ft_0", "ft_1"]  # valid JSON lines only, the torn one gone
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert run_evaluate(cfg) == []


def test_temp_files_of_a_killed_evaluation_are_removed(experiment):
    results = Path(experiment["cfg"].results_file)
    leftover = results.with_name(f".results.jsonl.999999999@{io._HOST}.abcdef.tmp")
    leftover.write_text('{"name": "ft_0"')
    run_evaluate(experiment["cfg"])
    assert not leftover.exists() and results.is_file()


def test_the_preprocessed_cache_is_readable_by_the_group(experiment):
    old = os.umask(0o027)
    try:
        run_evaluate(experiment["cfg"])
    finally:
        os.umask(old)
    cached = list((experiment["tmp"] / "cache").iterdir())
    assert cached and {oct(stat.S_IMODE(p.stat().st_mode)) for p in cached} == {oct(0o640)}


def test_kill_9_at_any_commit_point_resumes_to_identical_rows(experiment, monkeypatch):
    cfg = experiment["cfg"]
    cfg.eval.models_per_pass = 1  # one row at a time
    cfg.eval.cache.enabled = False  # no reader threads: torch's thread pool is not fork-safe
    results = Path(cfg.results_file)

    def accuracies():
        return {name: {k: v for k, v in row.items() if k not in ("meta", "path")} for name, row in _rows(experiment).items()}

    from soup_exp.artifacts.correctness import correctness_path, read_hits

    def bits():
        return {(m, d): h.bits.tobytes() for m, per in read_hits(correctness_path(results)).items()
                for d, h in per.items()}

    run_evaluate(cfg)
    expected, expected_bits = accuracies(), bits()
    for n in (1, 2, 3, 4):  # each row commits its hits, then itself: before each of the first four commits
        results.unlink()
        correctness_path(results).unlink()
        status, err = run_in_child(lambda: (kill_before_commit(n), run_evaluate(cfg)))  # noqa: B023
        assert status == -signal.SIGKILL, err
        rows_done = (n - 1) // 2
        assert len(results.read_text().splitlines()) == rows_done if results.exists() else rows_done == 0
        run_evaluate(cfg)
        assert accuracies() == expected and not list(results.parent.glob("*.tmp"))
        assert bits() == expected_bits
