"""`soup-exp import`: checkpoints in the authors' exact release format become ingredients whose
logits and soups are those of the authors' own code (tests/models/authors_code.py)."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import authors_code as authors
import open_clip
import pytest
import torch
from hydra import compose, initialize_config_dir
from safetensors.torch import load_file

from soup_exp.data.classes import ClassSpace
from soup_exp.models import build_classifier, load_classifier
from soup_exp.models.release import ReleaseCheckpointError, WrapperLayout, read_checkpoint
from soup_exp.soups import greedy_soup, uniform_soup
from soup_exp.stages.entry import packaged_config_dir

TINY = {"source": "open_clip", "name": "soup-tiny-vit", "pretrained": None}
NUM_MODELS = 12  # model_10 and model_11 sort after model_9 (numbers, not strings)
TEXT_KEYS = {"model.positional_embedding", "model.text_projection", "model.logit_scale",
             "model.token_embedding.weight", "model.ln_final.weight", "model.ln_final.bias"}


def _clip(name: str = "soup-tiny-vit", **kwargs) -> torch.nn.Module:
    import soup_exp.models  # noqa: F401  (registers soup-tiny-vit)

    return open_clip.create_model(name, pretrained=None, **kwargs)


def _wrapper(clip_model: torch.nn.Module) -> authors.ModelWrapper:
    torch.manual_seed(0)
    return authors.ModelWrapper(clip_model, clip_model.visual.output_dim, 1000, normalize=True)


def _images(n: int, size: int = 32, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


class Release:
    """A folder of model_<i>.pt files saved exactly as the authors' finetune.py saved them
    (``torch.save(ModelWrapper(...).state_dict())``), their results and hparams files, and a
    deterministic stand-in for their held-out set."""

    def __init__(self, root: Path):
        self.dir = root / "checkpoints"
        self.dir.mkdir(parents=True)
        torch.manual_seed(0)
        base = _wrapper(_clip())
        self.paths = []
        for i in range(NUM_MODELS):
            model = copy.deepcopy(base)
            g = torch.Generator().manual_seed(100 + i)
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(0.05 * (p.std() if p.numel() > 1 else 0.02) * torch.randn(p.shape, generator=g))
            path = self.dir / f"model_{i}.pt"
            torch.save(model.state_dict(), path)
            self.paths.append(path)
        self.base_model = _clip()  # what their main.py gets from clip.load
        self.images = _images(64)
        with torch.no_grad():
            teachers = [authors.get_model_from_sd(torch.load(self.paths[i]), self.base_model)(self.images)
                        for i in (3, 8)]
        self.labels = torch.cat([teachers[0][:32].argmax(1), teachers[1][32:].argmax(1)])
        self.scores = [self.wrapper_accuracy(authors.get_model_from_sd(torch.load(p), self.base_model))
                       for p in self.paths]
        self.scores[5] = self.scores[4]  # the release's model_4/model_5 tie
        self.results = root / "individual_model_results.jsonl"
        self.results.write_text("".join(json.dumps({"model_name": f"model_{i}", "ImageNet2p": s}) + "\n"
                                        for i, s in enumerate(self.scores)))
        self.hparams = root / "hparam_info.json"
        entries = {"model_0": {"info": "LP initialization"}}
        entries.update({f"model_{i}": {"aug": None if i % 2 else f"rand-m{i}-n1", "wd": 0.1, "lr": i / 1e5,
                                       "mix": 0, "smoothing": 0.1, "epochs": 4 + i} for i in range(1, NUM_MODELS)})
        self.hparams.write_text(json.dumps(entries))

    @torch.no_grad()
    def wrapper_accuracy(self, model: torch.nn.Module) -> float:
        """Their test_model_on_dataset on the stand-in held-out set."""
        model.eval()
        return (model(self.images).argmax(1) == self.labels).sum().item() / len(self.labels)


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Release:
    torch.set_num_threads(1)
    return Release(tmp_path_factory.mktemp("release"))


def _import_cfg(release: Release, out: Path, *extra: str):
    overrides = [f"checkpoints={release.dir}", f"results={release.results}", f"hparams={release.hparams}",
                 "model=tiny_clip", "model.pretrained=null", f"paths.output_dir={out}", "name=release",
                 "progress=false", *extra]
    with initialize_config_dir(config_dir=str(packaged_config_dir()), version_base="1.3"):
        return compose(config_name="import", overrides=overrides)


@pytest.fixture(scope="module")
def imported(release, tmp_path_factory) -> Path:
    from soup_exp.import_release import run_import

    cfg = _import_cfg(release, tmp_path_factory.mktemp("out"))
    run_import(cfg)
    return Path(cfg.ingredients_dir)


def _held_out_fn(release: Release):
    skeleton, _ = build_classifier(TINY, 1000)

    def evaluate(state_dict) -> float:
        skeleton.load_state_dict(state_dict, strict=True)
        return release.wrapper_accuracy(skeleton)

    return evaluate


def _as_wrapper_keys(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {f"model.visual.{k.removeprefix('image_encoder.')}": v for k, v in state_dict.items()
           if k.startswith("image_encoder.")}
    out.update({f"classification_head.{k.removeprefix('head.')}": v for k, v in state_dict.items()
                if k.startswith("head.")})
    return out


def test_ingredients_follow_the_contract(release, imported):
    names = sorted(p.name for p in imported.iterdir())
    assert names == sorted(f"model_{i}" for i in range(NUM_MODELS))
    lp = json.loads((imported / "model_0" / "ingredient.json").read_text())
    ft = json.loads((imported / "model_7" / "ingredient.json").read_text())
    assert (lp["kind"], ft["kind"]) == ("lp", "finetune")
    assert ft["held_out_accuracy"] == release.scores[7] and ft["held_out_precision"] == "fp32"
    assert ft["hparams"] == {"lr": 7 / 1e5, "weight_decay": 0.1, "epochs": 11, "mix": 0, "label_smoothing": 0.1,
                             "aug": None}
    assert ft["sweep"]["drawn"]["wd"] == 0.1 and lp["hparams"] == {"mode": "lp", "init_from": None}
    assert ft["base_model"] == "open_clip:soup-tiny-vit:random" and ft["classes"] == list(range(1000))
    assert ft["metrics"]["published"]["ImageNet2p"] == release.scores[7]
    weights = load_file(str(imported / "model_7" / "model.safetensors"))
    source = read_checkpoint(release.paths[7])
    assert set(source) - set(_as_wrapper_keys(weights)) == TEXT_KEYS  # the six text tensors dropped
    for key, tensor in _as_wrapper_keys(weights).items():
        assert torch.equal(tensor, source[key]), key


def test_imported_logits_equal_the_authors_wrapper(release, imported):
    images = _images(8, seed=5)
    for i in (0, 6, 11):
        ours = load_classifier(imported / f"model_{i}", TINY, 1000).eval()
        theirs = authors.get_model_from_sd(torch.load(release.paths[i]), release.base_model).eval()
        with torch.no_grad():
            assert torch.equal(ours(images), theirs(images))


def test_uniform_soup_equals_the_authors_loop(release, imported):
    theirs = authors.uniform_soup([str(p) for p in release.paths])
    ours = uniform_soup(imported, arithmetic="authors")
    mapped = _as_wrapper_keys(ours)
    assert set(theirs) - set(mapped) == TEXT_KEYS
    for key, tensor in mapped.items():
        assert torch.equal(tensor, theirs[key]), key  # bit for bit
    summed = _as_wrapper_keys(uniform_soup(imported, arithmetic="sum"))  # sum, then divide
    gap = max((summed[k] - theirs[k]).abs().max().item() for k in summed)
    assert 0 < gap < 1e-6


def test_greedy_soup_equals_the_authors_loop(release, imported):
    names, theirs = authors.greedy_soup(release.results, release.dir, release.base_model, release.wrapper_accuracy)
    result = greedy_soup(imported, None, _held_out_fn(release), arithmetic="authors")
    assert result.chosen_names == names
    assert 1 < len(names) < NUM_MODELS  # the run both accepts and rejects candidates
    order = [h["name"] for h in result.history]
    assert order.index("model_5") == order.index("model_4") - 1  # tie: the later row first
    for key, tensor in _as_wrapper_keys(result.state_dict).items():
        assert torch.equal(tensor, theirs[key]), key


def test_import_resumes_and_reimports_changed_files(release, tmp_path):
    from soup_exp.import_release import run_import

    cfg = _import_cfg(release, tmp_path)
    run_import(cfg)
    weights = Path(cfg.ingredients_dir) / "model_3" / "model.safetensors"
    first = weights.stat().st_mtime_ns
    run_import(cfg)
    assert weights.stat().st_mtime_ns == first  # nothing rewritten
    os.utime(release.paths[3], ns=(first, first + 10**9))
    try:
        run_import(cfg)
    finally:
        stat = release.paths[3].stat()
        os.utime(release.paths[3], ns=(stat.st_atime_ns, stat.st_mtime_ns - 10**9))
    assert weights.stat().st_mtime_ns != first
    info = json.loads((weights.parent / "ingredient.json").read_text())
    assert info["source"]["mtime_ns"] == first + 10**9


def test_a_finetune_of_the_same_name_is_not_overwritten(release, tmp_path):
    from soup_exp.errors import OutputConflictError
    from soup_exp.import_release import run_import

    cfg = _import_cfg(release, tmp_path)
    other = Path(cfg.ingredients_dir) / "model_2"
    other.mkdir(parents=True)
    (other / "ingredient.json").write_text(json.dumps({"identity": {"mode": "finetune"}, "fingerprint": "x"}))
    with pytest.raises(OutputConflictError, match="model_2"):
        run_import(cfg)


def _layout() -> WrapperLayout:
    return WrapperLayout.from_clip(_clip())


def _save(path: Path, obj) -> Path:
    torch.save(obj, path)
    return path


def test_malformed_checkpoints_are_refused_naming_file_and_keys(release, tmp_path):
    layout = _layout()
    good = torch.load(release.paths[1])

    missing = dict(good)
    del missing["model.visual.conv1.weight"]
    with pytest.raises(ReleaseCheckpointError, match=r"bad\.pt.*missing keys: model\.visual\.conv1\.weight"):
        layout.check(missing, tmp_path / "bad.pt")
    extra = {**good, "model.transformer.resblocks.0.attn.in_proj_weight": torch.zeros(3)}
    with pytest.raises(ReleaseCheckpointError, match=r"unexpected keys: model\.transformer\.resblocks"):
        layout.check(extra, "bad.pt")
    shaped = {**good, "classification_head.weight": torch.zeros(10, 64), "classification_head.bias": torch.zeros(10)}
    with pytest.raises(ReleaseCheckpointError, match=r"wrong shapes: classification_head\.bias: \(10,\), expected \(1000,\)"):
        layout.check(shaped, "bad.pt")

    class Payload:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    for obj, message in [
        ({**good, "extra": Payload()}, r"refused: unpickling it would run Python code \(\w+\.system\)"),
        ({"state_dict": good}, r"flat state dict of tensors; entries state_dict"),
        ([good["classification_head.bias"]], r"expected a state dict .* got list"),
        (_CustomModule(), r"refused: unpickling it would run Python code \(.*_CustomModule\)"),
    ]:
        path = _save(tmp_path / "model_1.pt", obj)
        with pytest.raises(ReleaseCheckpointError, match=message) as err:
            read_checkpoint(path)
        assert str(path) in str(err.value)
    truncated = tmp_path / "model_2.pt"
    truncated.write_bytes(release.paths[2].read_bytes()[:4096])
    with pytest.raises(ReleaseCheckpointError, match="not a readable torch checkpoint"):
        read_checkpoint(truncated)


class _CustomModule(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(2))


def test_stage_refuses_a_bad_file_and_an_empty_folder(release, tmp_path):
    from soup_exp.errors import ConfigError
    from soup_exp.import_release import run_import

    folder = tmp_path / "ckpts"
    folder.mkdir()
    cfg = _import_cfg(release, tmp_path / "out", f"checkpoints={folder}")
    with pytest.raises(ReleaseCheckpointError, match="holds no model_<i>.pt files"):
        run_import(cfg)
    state = torch.load(release.paths[1])
    state["model.visual.proj"] = torch.zeros(3, 3)
    _save(folder / "model_1.pt", state)
    with pytest.raises(ReleaseCheckpointError, match=r"model_1\.pt is not a ModelWrapper.*model\.visual\.proj: \(3, 3\)"):
        run_import(cfg)
    with pytest.raises(ConfigError, match="checkpoints=DIR is required"):
        run_import(_import_cfg(release, tmp_path / "out", "checkpoints=null"))


def test_class_subset_keeps_those_head_rows(release, tmp_path):
    from soup_exp.import_release import run_import

    cfg = _import_cfg(release, tmp_path, "data.classes=[5,1,900]")
    run_import(cfg)
    weights = load_file(str(Path(cfg.ingredients_dir) / "model_3" / "model.safetensors"))
    head = torch.load(release.paths[3])["classification_head.weight"]
    assert torch.equal(weights["head.weight"], head[[1, 5, 900]])
    info = json.loads((Path(cfg.ingredients_dir) / "model_3" / "ingredient.json").read_text())
    assert info["classes"] == list(ClassSpace.from_config([5, 1, 900]).indices) == [1, 5, 900]


@pytest.mark.slow  # ~10 s: two ViT-B/32 models and a 456 MB checkpoint
def test_real_vitb32_release_layout(tmp_path):
    """The real key set: open_clip's ViT-B-32 with QuickGELU is OpenAI's ViT-B/32 (same names)."""
    from soup_exp.import_release import run_import

    torch.manual_seed(0)
    clip_model = _clip("ViT-B-32", force_quick_gelu=True)
    wrapper = authors.ModelWrapper(clip_model, 512, 1000, normalize=True)
    state = wrapper.state_dict()
    dropped = {k for k in state if not k.startswith(("model.visual.", "classification_head."))}
    assert dropped == TEXT_KEYS
    folder = tmp_path / "release"
    folder.mkdir()
    torch.save(state, folder / "model_0.pt")
    del state
    with initialize_config_dir(config_dir=str(packaged_config_dir()), version_base="1.3"):
        cfg = compose(config_name="import", overrides=[f"checkpoints={folder}", f"paths.output_dir={tmp_path}",
                                                       "name=vitb32", "progress=false"])
    (out,) = run_import(cfg)
    info = json.loads((out / "ingredient.json").read_text())
    assert info["base_model"] == "open_clip:ViT-B-32:openai" and info["kind"] == "lp"
    assert info["held_out_accuracy"] == pytest.approx(0.7808076923076923)  # the packaged results file
    ours = load_classifier(out, cfg.model, 1000).eval()
    images = _images(2, size=224)
    with torch.no_grad():
        assert torch.equal(ours(images), wrapper.eval()(images))


@pytest.mark.slow
def test_soup_evaluate_and_report_run_on_the_imports(release, tmp_path):
    """The stages after `import`, on the miniature ImageNet family (heads cut to its 8 classes)."""
    from soup_exp.inputs import prepare_inputs
    from soup_exp.stages.entry import STAGES

    common = ["data=synthetic", "model=tiny_clip", "model.pretrained=null", f"paths.output_dir={tmp_path / 'out'}",
              f"paths.cache_dir={tmp_path / 'cache'}", "name=release", "progress=false", "device=cpu",
              "num_workers=0", "logger=disabled", "data.synthetic.train_per_class=4",
              "data.synthetic.val_per_class=4", "data.synthetic.shift_per_class=3",
              "data.synthetic.pretrain_per_class=1", "data.heldout.per_class=3"]

    def run(stage: str, *extra: str):
        with initialize_config_dir(config_dir=str(packaged_config_dir()), version_base="1.3"):
            cfg = compose(config_name=stage, overrides=[*common, *extra])
        return STAGES[stage].run()(cfg)

    with initialize_config_dir(config_dir=str(packaged_config_dir()), version_base="1.3"):
        prepare_inputs({"data": compose(config_name="soup", overrides=common).data})  # the data stage's work
    run("import", f"checkpoints={release.dir}", f"results={release.results}", f"hparams={release.hparams}")
    made = run("soup", "recipes=[uniform,greedy,ensemble]")
    assert set(made) == {"uniform", "greedy", "ensemble"}
    rows = {row["name"]: row for row in run("evaluate")}
    assert {f"model_{i}" for i in range(NUM_MODELS)} <= set(rows)
    assert rows["model_0"]["kind"] == "lp" and rows["greedy"]["kind"] == "soup"
    assert all(0.0 <= rows[n]["ObjectNet"] <= 1.0 and "avg_shifts" in rows[n] for n in ("uniform", "ensemble"))
    outputs = run("report", "compare=paper_vitb32", f"report_dir={tmp_path / 'report'}")
    comparison = outputs["comparison.md"].read_text()
    assert "[paper]" in comparison and "Uniform soup" in comparison
    check = outputs["reproduction.md"].read_text()  # each import beside its published numbers
    for i in range(NUM_MODELS):
        assert f"model_{i} [ours]" in check and f"model_{i} [published]" in check
    assert f"uniform (all {NUM_MODELS}) [published]" in check and "max |Δ|" in check
