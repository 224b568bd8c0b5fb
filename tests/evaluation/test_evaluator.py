import numpy as np
import pytest
import torch
from eval_testkit import NUM_IDS, LogitProjection, LookupModel, eval_transform, make_dataset

from soup_exp.artifacts.results import avg_shifts
from soup_exp.data.base import LabeledImages
from soup_exp.errors import ConfigError
from soup_exp.evaluation import sources
from soup_exp.evaluation.evaluator import Evaluator
from soup_exp.soups.context import SoupContext
from soup_exp.soups.judge import Judge
from soup_exp.vocabulary import HELD_OUT


def _evaluator(suite, cache=False, **kwargs):
    cache_dir = str(suite["tmp"] / "cache") if cache else None
    return Evaluator(suite["datasets"], eval_transform(), batch_size=4, cache_dir=cache_dir,
                     progress=False, **kwargs)


@pytest.mark.parametrize("cache", [False, True])
def test_accuracy_matches_hand_computed_values_with_projections(suite, cache):
    results = _evaluator(suite, cache).evaluate({"m": LookupModel(suite["table"])})
    assert results["m"] == pytest.approx(suite["expected"], abs=0)
    assert "avg_shifts" not in results["m"]
    assert min(suite["expected"].values()) > 0 and max(suite["expected"].values()) < 1


def test_border_crop_matters_so_it_is_applied(suite):
    objectnet = suite["datasets"][2]
    uncropped = LabeledImages("ObjectNet", objectnet.samples, 3, objectnet.projection, border_crop=0)
    model = LookupModel(torch.eye(10))
    ids = torch.arange(10)
    for dataset, should_read_ids in ((objectnet, True), (uncropped, False)):
        evaluator = Evaluator([dataset], eval_transform(), batch_size=10, progress=False)
        images, _ = next(evaluator.batches("ObjectNet"))
        assert torch.equal(model.read_ids(images), ids) is should_read_ids


def test_cache_and_no_cache_give_identical_logits(suite):
    model = LookupModel(suite["table"])
    plain, cached = _evaluator(suite, cache=False), _evaluator(suite, cache=True)
    for name in plain.names:
        assert torch.equal(plain.logits(model, name), cached.logits(model, name))
        a = torch.cat([x for x, _ in plain.batches(name)])
        b = torch.cat([x for x, _ in cached.batches(name)])
        assert torch.equal(a, b)


def test_one_pass_for_many_models_equals_separate_passes_and_decodes_once(suite, monkeypatch):
    rng = np.random.default_rng(1)
    models = {f"m{i}": LookupModel(rng.normal(size=(10, 10))) for i in range(3)}
    evaluator = _evaluator(suite)
    separate = {name: evaluator.evaluate({name: m})[name] for name, m in models.items()}

    reads = []
    original = sources.DecodedImages.__getitem__
    monkeypatch.setattr(sources.DecodedImages, "__getitem__",
                        lambda self, i: reads.append(i) or original(self, i))
    together = evaluator.evaluate(models)
    assert together == separate
    assert len(reads) == sum(len(d) for d in suite["datasets"])


def _authors_projected_ensemble(member_logits, groups, targets):
    """Their ensemble branch on ObjectNet: each member's logits projected by
    ObjectNetBase.project_logits (max over mapped classes, float64), cached, summed as
    ``x / NUM_MODELS``, then scored as they stand."""
    def project_logits(logits):
        logits = logits.cpu().numpy()
        logits_projected = np.zeros((logits.shape[0], len(groups)))
        for k, v in enumerate(groups):
            logits_projected[:, k] = np.max(logits[:, list(v)], axis=1).squeeze()
        return torch.tensor(logits_projected)

    predictions = [project_logits(x) / float(len(member_logits)) for x in member_logits[:1]][0]
    for x in member_logits[1:]:
        predictions += project_logits(x) / float(len(member_logits))
    return (predictions.argmax(dim=1) == targets).float().mean().item()


@pytest.mark.parametrize("mode", ["projected", "raw"])
def test_ensembles_average_projected_logits_as_the_authors_did(tmp_path, mode):
    from eval_testkit import make_dataset

    from soup_exp.data.base import LogitProjection

    groups = ((0, 1), (2,))
    dataset = make_dataset(tmp_path, "ObjectNet", [(0, 1)], 2, projection=LogitProjection(groups))
    a = LookupModel(torch.tensor([[4.0, 0.0, 3.0]] * 10))
    b = LookupModel(torch.tensor([[0.0, 4.0, 3.0]] * 10))
    evaluator = Evaluator([dataset], eval_transform(), progress=False, ensemble_logits=mode)
    # projected first: [4, 3] for both members -> target 0 (wrong), as the authors' ensembles;
    # raw logits first: mean [2, 2, 3] -> projected [2, 3] -> target 1 (correct).
    expected = {"projected": 0.0, "raw": 1.0}[mode]
    assert evaluator.evaluate_ensembles({"ens": [a, b]})["ens"]["ObjectNet"] == expected
    assert evaluator.evaluate({"a": a, "b": b}) == {"a": {"ObjectNet": 0.0}, "b": {"ObjectNet": 0.0}}
    members = [evaluator.logits(m, "ObjectNet") for m in (a, b)]
    mean = sum(evaluator.member_logits(x, "ObjectNet") for x in members) / 2
    assert evaluator.ensemble_accuracy(mean, "ObjectNet") == expected
    assert evaluator.accuracy_from_logits(sum(members) / 2, "ObjectNet") == 1.0  # raw logits, projected
    if mode == "projected":
        assert _authors_projected_ensemble(members, groups, dataset.targets) == expected


def test_ensemble_modes_agree_where_projection_selects_columns(suite):
    rng = np.random.default_rng(3)
    members = [LookupModel(rng.normal(size=(10, 10))) for _ in range(3)]
    results = {mode: Evaluator(suite["datasets"], eval_transform(), batch_size=4, progress=False,
                               ensemble_logits=mode).evaluate({"ens": members})["ens"]
               for mode in ("projected", "raw")}
    selecting = [d.name for d in suite["datasets"] if d.projection is None
                 or all(len(g) == 1 for g in d.projection.groups)]
    assert selecting and all(results["projected"][n] == results["raw"][n] for n in selecting)


@pytest.mark.parametrize("mode", ["projected", "raw"])
def test_ensemble_sums_from_member_passes_equal_one_pass_over_the_ensemble(suite, mode):
    from soup_exp.evaluation.evaluator import EnsembleSums

    rng = np.random.default_rng(5)
    members = {f"m{i}": LookupModel(rng.normal(size=(10, 10))) for i in range(3)}
    evaluator = Evaluator(suite["datasets"], eval_transform(), batch_size=3, progress=False, ensemble_logits=mode)
    expected = evaluator.evaluate_ensembles({"ens": list(members.values())})["ens"]
    sums = EnsembleSums(evaluator, {"ens": ["m2", "m0", "m1"], "pair": ["m0", "m1"]},
                        {name: name for name in members})
    evaluator.evaluate({"m1": members["m1"]}, on_logits=sums)  # members arrive over separate passes,
    assert not sums.complete("ens", evaluator.names)          # in another order than listed
    evaluator.evaluate({"m2": members["m2"], "m0": members["m0"]}, on_logits=sums)
    assert sums.complete("ens", evaluator.names) and sums.complete("pair", evaluator.names)
    scored = sums.accuracies("ens", evaluator.names)
    assert scored == {name: expected[name] for name in evaluator.names}

def test_invalid_modes_are_config_errors(suite):
    with pytest.raises(ConfigError, match="ensemble_logits='mean'"):
        Evaluator(suite["datasets"], eval_transform(), ensemble_logits="mean")
    with pytest.raises(ConfigError, match="eval.precision='fp8'"):
        Evaluator(suite["datasets"], eval_transform(), precision="fp8")


def test_paper_preset_evaluates_in_fp32_and_projects_ensemble_members():
    from hydra import compose, initialize_config_dir

    from soup_exp.evaluation.evaluator import configured_numerics
    from soup_exp.evaluation.settings import EvalSettings
    from soup_exp.stages.entry import packaged_config_dir

    with initialize_config_dir(config_dir=str(packaged_config_dir()), version_base="1.3"):
        cfg = compose(config_name="evaluate", overrides=["device=cuda"])
        fast = compose(config_name="soup", overrides=["device=cuda", "eval.precision=bf16"])
        cpu = compose(config_name="soup", overrides=["device=cpu", "eval.precision=bf16"])
    assert cfg.eval.ensemble_logits == "projected" and cfg.precision == "bf16"  # training stays bf16
    cfg, fast, cpu = (EvalSettings.from_config(c) for c in (cfg, fast, cpu))
    assert configured_numerics(cfg) == "fp32" and configured_numerics(fast) == "bf16"
    assert configured_numerics(cpu) == "fp32"  # autocast is CUDA-only


def test_shared_member_runs_once_per_batch(suite):
    calls = []
    model = LookupModel(suite["table"])
    model.register_forward_hook(lambda *_: calls.append(1))
    evaluator = Evaluator(suite["datasets"][:1], eval_transform(), batch_size=100, progress=False)
    out = evaluator.evaluate({"single": model, "ens": [model, model]})
    assert out["single"] == out["ens"] and len(calls) == 1


def test_logits_are_raw_and_in_dataset_order(suite):
    evaluator = _evaluator(suite, cache=True)
    table = torch.as_tensor(suite["table"])
    for dataset in suite["datasets"]:
        ids = [image_id for image_id, _ in suite["spec"][dataset.name]]
        logits = evaluator.logits(LookupModel(table), dataset.name)
        assert torch.equal(logits, table[ids])
        assert evaluator.accuracy_from_logits(logits, dataset.name) == suite["expected"][dataset.name]
    with pytest.raises(ValueError, match="expected logits of shape"):
        evaluator.accuracy_from_logits(torch.zeros(3, 10), "ImageNet")


@pytest.mark.parametrize("cache", [False, True])
def test_batches_shuffle_reproducibly_and_keep_targets(suite, cache):
    evaluator = _evaluator(suite, cache)
    model = LookupModel(torch.eye(10))
    spec = dict(suite["spec"]["ImageNetR"])
    runs = []
    for _ in range(2):
        seen = []
        for images, targets in evaluator.batches("ImageNetR", 3, shuffle=True,
                                                 generator=torch.Generator().manual_seed(5)):
            ids = model.read_ids(images)
            assert [spec[int(i)] for i in ids] == targets.tolist()
            seen += ids.tolist()
        runs.append(seen)
    assert runs[0] == runs[1] and sorted(runs[0]) == list(range(10)) and runs[0] != list(range(10))


def test_heldout_accuracy_fn_scores_each_state_dict(suite):
    datasets = [LabeledImages("ImageNet2p", d.samples, 10) for d in suite["datasets"][:1]]
    evaluator = Evaluator(datasets, eval_transform(), cache_dir=str(suite["tmp"] / "c"), progress=False)
    skeleton = LookupModel(torch.zeros(10, 10))
    accuracy = evaluator.heldout_accuracy_fn(skeleton)
    table = torch.as_tensor(suite["table"])
    assert accuracy({"table": table}) == suite["expected"]["ImageNet"]
    targets = [t for _, t in suite["spec"]["ImageNet"]]
    perfect = torch.zeros(10, 10)
    for image_id, target in suite["spec"]["ImageNet"][:10]:
        perfect[image_id, target] = 1
    assert accuracy({"table": perfect}) == sum(
        perfect[i].argmax().item() == t for (i, _), t in zip(suite["spec"]["ImageNet"], targets, strict=True)
    ) / len(targets)
    with pytest.raises(RuntimeError, match="table"):
        accuracy({"weights": table})


def test_avg_shifts_only_when_all_five_ran():
    accs = {"ImageNetV2": 0.1, "ImageNetSketch": 0.2, "ImageNetR": 0.3, "ObjectNet": 0.4}
    assert avg_shifts(accs) is None
    assert avg_shifts({**accs, "ImageNetA": 0.5}) == pytest.approx(0.3)


def test_avg_shifts_added_by_evaluate(tmp_path):
    from eval_testkit import make_dataset

    shifts = ["ImageNetV2", "ImageNetSketch", "ImageNetR", "ObjectNet", "ImageNetA"]
    datasets = [make_dataset(tmp_path, name, [(k, 0), (k, 1)], 10) for k, name in enumerate(shifts)]
    out = Evaluator(datasets, eval_transform(), progress=False).evaluate({"m": LookupModel(torch.eye(10))})
    # image id k is predicted as class k; target 0 is right only for k == 0, target 1 only for k == 1
    assert out["m"]["avg_shifts"] == pytest.approx((0.5 + 0.5 + 0 + 0 + 0) / 5)


def test_bad_inputs_fail_clearly(suite):
    with pytest.raises(ConfigError, match="listed twice"):
        Evaluator(suite["datasets"] * 2, eval_transform())
    with pytest.raises(ConfigError, match="no images"):
        Evaluator([LabeledImages("ImageNet", [], 10)], eval_transform())
    with pytest.raises(ConfigError, match="not in this evaluator's suite"):
        _evaluator(suite).evaluate({"m": LookupModel(suite["table"])}, datasets=["ImageNetA"])


@pytest.mark.parametrize("enabled", [True, False])
def test_build_evaluator_reads_the_stage_config(suite, monkeypatch, enabled):
    from omegaconf import OmegaConf

    from soup_exp.data import registry
    from soup_exp.evaluation.evaluator import build_evaluator
    from soup_exp.evaluation.settings import EvalSettings

    by_name = {d.name: d for d in suite["datasets"]}
    calls = []

    def fake_build(name, data_cfg, classes):
        calls.append((name, data_cfg.roots.ImageNet, classes))
        return by_name[name]

    monkeypatch.setattr(registry, "build_eval_dataset", fake_build)
    cfg = OmegaConf.create({
        "device": "cpu", "precision": "bf16", "num_workers": 0, "progress": False,
        "data": {"roots": {"ImageNet": "/data/imagenet"}},
        "eval": {"datasets": ["ImageNet", "ImageNetR"], "batch_size": 7, "read_threads": 2,
                 "precision": "fp32", "ensemble_logits": "projected",
                 "num_workers": 2, "cache": {"enabled": enabled, "dir": str(suite["tmp"] / "c")}},
    })
    evaluator = build_evaluator(EvalSettings.from_config(cfg), eval_transform(), "classes")
    assert evaluator.names == ["ImageNet", "ImageNetR"]
    assert calls == [("ImageNet", "/data/imagenet", "classes"), ("ImageNetR", "/data/imagenet", "classes")]
    assert (evaluator.batch_size, evaluator.num_workers) == (7, 2)
    assert (evaluator.cache is not None) is enabled
    assert build_evaluator(EvalSettings.from_config(cfg), eval_transform(), "classes",
                           names=["ObjectNet"]).names == ["ObjectNet"]
    cfg.eval.num_workers = None  # falls back to the top-level num_workers
    evaluator = build_evaluator(EvalSettings.from_config(cfg), eval_transform(), "classes")
    assert evaluator.num_workers == 0
    out = evaluator.evaluate({"m": LookupModel(suite["table"])})["m"]
    assert out["ImageNetR"] == suite["expected"]["ImageNetR"]
    assert "avg_shifts" not in out  # the paper's mean needs all five shifts


def test_training_mode_is_restored(suite):
    model = LookupModel(suite["table"]).train()
    seen = []
    model.register_forward_hook(lambda m, *_: seen.append(m.training))
    _evaluator(suite).evaluate({"m": model}, datasets=["ImageNetR"])
    assert seen and not any(seen) and model.training



class _FixedLogits(Judge):
    """The judge of the ensemble recipes over a real evaluator and fixed held-out logits."""

    def __init__(self, evaluator, raw):
        self._held_out_evaluator, self._raw, self._used = evaluator, raw, {}

    evaluator = property(lambda self: self._held_out_evaluator)

    def heldout_logits(self, model):
        return self._raw[int(model.name.removeprefix("m"))]


def _held_out_context(evaluator, raw, run) -> SoupContext:
    """The soup context of the ensemble recipes: a pool of named members, fixed logits."""
    from types import SimpleNamespace

    judge = _FixedLogits(evaluator, raw)
    members = [SimpleNamespace(name=f"m{i}") for i in range(len(raw))]
    pool = SimpleNamespace(ingredients=members, names=[m.name for m in members],
                           scores=[judge.logits_accuracy(r) for r in raw])
    return SoupContext(pool=pool, judge=judge, store=None, run=run, recipe="test", params={},
                       accumulate_dtype=torch.float32, arithmetic="sum", progress=False, kernel_device_name="cpu")


@pytest.mark.parametrize("mode", ["projected", "raw"])
def test_the_ensemble_recipes_score_as_the_evaluate_stage(tmp_path, mode):
    """One ensemble mean: the ensemble and greedy_ensemble recipes give the held-out accuracy
    the evaluate stage writes for their ensembles, on a held-out set with a many-to-one
    projection (where averaging raw logits, the recipes' old path, scores otherwise)."""
    from types import SimpleNamespace

    from soup_exp.soups.ensemble import ensemble_recipe, greedy_ensemble_recipe

    rng = np.random.default_rng(11)
    groups = ((0, 1, 2), (3, 4), (5, 6, 7, 8, 9))
    spec = [(i % NUM_IDS, int(rng.integers(3))) for i in range(40)]
    held_out = make_dataset(tmp_path / "data", HELD_OUT, spec, 3, LogitProjection(groups))
    evaluator = Evaluator([held_out], eval_transform(), batch_size=3, progress=False, ensemble_logits=mode)
    members = [LookupModel(rng.normal(size=(NUM_IDS, 10)).astype(np.float32)) for _ in range(5)]
    raw = [evaluator.logits(m, HELD_OUT) for m in members]
    ctx = _held_out_context(evaluator, raw, SimpleNamespace(log_table=lambda *a: None))

    everything = ensemble_recipe(ctx).held_out_accuracy
    assert everything == evaluator.evaluate_ensembles({"all": members})["all"][HELD_OUT]
    greedy = greedy_ensemble_recipe(ctx, tolerance=0.0)
    chosen = [members[ctx.pool.names.index(name)] for name in greedy.members]
    assert greedy.held_out_accuracy == evaluator.evaluate({"g": chosen})["g"][HELD_OUT]
    raw_mean = evaluator.accuracy_from_logits(torch.stack(raw).mean(0), HELD_OUT)
    assert (raw_mean != everything) is (mode == "projected")  # the test tells the two means apart
