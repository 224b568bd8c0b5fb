"""EvalSettings: what a stage hands the evaluation library instead of its root config.

The pinned hashes were computed on main before the settings existed (``build_evaluator(cfg,
...)``): the evaluator built from settings must give the same score identities and dataset
identities, or every recorded held-out score and cached logit would be measured again.
"""

import dataclasses
import os

import pytest
from eval_testkit import eval_transform
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from soup_exp.data import registry
from soup_exp.data.base import LabeledImages
from soup_exp.errors import ConfigError
from soup_exp.evaluation.evaluator import build_evaluator, configured_numerics, evaluation_suite
from soup_exp.evaluation.settings import EvalSettings
from soup_exp.stages.entry import packaged_config_dir


def stage_cfg(device="cpu", precision="fp32", **eval_keys):
    return OmegaConf.create({
        "device": device, "precision": "bf16", "num_workers": 3, "progress": False,
        "paths": {"data_dir": "/pinned"},
        "data": {"roots": {"ImageNet": "${paths.data_dir}/imagenet"}},
        "eval": {"datasets": ["ImageNet", "ImageNetR"], "batch_size": 7, "read_threads": 2, "precision": precision,
                 "ensemble_logits": "projected", "num_workers": None, "cache": {"enabled": False, "dir": None},
                 **eval_keys},
    })


def compose_stage(stage, *overrides):
    with initialize_config_dir(config_dir=str(packaged_config_dir()), version_base="1.3"):
        return compose(config_name=stage, overrides=["paths.data_dir=/pinned/data", *overrides])


def test_settings_read_the_stage_subtrees_once():
    cfg = compose_stage("evaluate", "eval.cache.dir=/c", "num_workers=5", "device=cpu")
    settings = EvalSettings.from_config(cfg)
    assert settings.datasets == tuple(cfg.eval.datasets)
    assert (settings.batch_size, settings.num_workers, settings.read_threads) == (256, 5, 4)
    assert (settings.device, settings.precision, settings.ensemble_logits) == ("cpu", "fp32", "projected")
    assert settings.cache_dir == "/c" and settings.progress is True
    assert settings.data.roots.ImageNet == "/pinned/data/imagenet"  # resolved before it leaves the root
    assert settings.data._get_parent() is None  # a detached copy: no way back to the root config
    assert OmegaConf.to_container(settings.data) == OmegaConf.to_container(cfg.data, resolve=True)
    cfg.eval.num_workers = 2
    cfg.eval.cache.enabled = False
    assert (EvalSettings.from_config(cfg).num_workers, EvalSettings.from_config(cfg).cache_dir) == (2, None)


def test_settings_are_frozen():
    settings = EvalSettings.from_config(stage_cfg())
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.precision = "bf16"
    with pytest.raises(Exception, match="read-only"):
        settings.data.roots.ImageNet = "/elsewhere"


@pytest.mark.parametrize(("key", "value"), [("precision", "fp8"), ("ensemble_logits", "mean")])
def test_an_unknown_value_is_one_line_naming_the_key(key, value):
    with pytest.raises(ConfigError) as error:
        EvalSettings.from_config(stage_cfg(**{key: value}))
    message = str(error.value)
    assert message.startswith(f"eval.{key}={value!r}: expected one of ") and "\n" not in message


def test_suite_adds_the_users_datasets_once():
    cfg = stage_cfg()
    cfg.data.datasets = {"Mine": {"root": "/mine"}, "ImageNet": {}}
    assert evaluation_suite(EvalSettings.from_config(cfg)) == ["ImageNet", "ImageNetR", "Mine"]


def test_numerics_follow_device_and_precision():
    assert configured_numerics(EvalSettings.from_config(stage_cfg("cuda", "bf16"))) == "bf16"
    assert configured_numerics(EvalSettings.from_config(stage_cfg("cpu", "bf16"))) == "fp32"


def pinned_dataset(name, data_cfg, classes):
    """Files of fixed sizes and mtimes at relative paths: an identity that is the same in
    every checkout (the path, size and mtime are what the identity hashes)."""
    samples = []
    for i in range(3):
        path = f"{name}-{i}.bin"
        with open(path, "wb") as f:
            f.write(b"x" * (i + 1))
        os.utime(path, ns=(1_600_000_000_000_000_000 + i, 1_600_000_000_000_000_000 + i))
        samples.append((path, i % 2))
    return LabeledImages(name, samples, 2, root=f"{data_cfg['roots']['ImageNet']}/{name}")


# (device, eval.precision) -> (numerics, {dataset: (identity, scores_identity)}), from main.
PINNED = {
    ("cpu", "fp32"): ("fp32", {"ImageNet": ("5ec25337d966b918364b", "686f1fe065986309"),
                               "ImageNetR": ("3a42e8ac66a9070c2977", "ec4e100a91d8994c")}),
    ("cpu", "bf16"): ("fp32", {"ImageNet": ("5ec25337d966b918364b", "686f1fe065986309"),
                               "ImageNetR": ("3a42e8ac66a9070c2977", "ec4e100a91d8994c")}),
    ("cuda", "bf16"): ("bf16", {"ImageNet": ("5ec25337d966b918364b", "6f158a5feac2bfc0"),
                                "ImageNetR": ("3a42e8ac66a9070c2977", "45642a770ce67709")}),
}


@pytest.mark.parametrize(("device", "precision"), list(PINNED))
def test_score_identities_are_the_ones_main_recorded(tmp_path, monkeypatch, device, precision):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(registry, "build_eval_dataset", pinned_dataset)
    evaluator = build_evaluator(EvalSettings.from_config(stage_cfg(device, precision)), eval_transform(), None)
    numerics, identities = PINNED[device, precision]
    assert (evaluator.precision, evaluator.numerics) == (precision, numerics)  # the logits cache hashes precision
    assert {n: (evaluator.dataset(n).identity(), evaluator.scores_identity(n)) for n in evaluator.names} == identities


def test_the_registry_sees_the_data_subtree_as_the_root_config_had_it(tmp_path):
    """A dataset built from the settings' detached copy is the dataset built from ``cfg.data``."""
    from soup_exp.data.classes import ClassSpace

    imagenet = tmp_path / "imagenet"
    for i in range(2):
        (imagenet / "val" / "n01440764").mkdir(parents=True, exist_ok=True)
        (imagenet / "val" / "n01440764" / f"ILSVRC2012_val_{i + 1:08d}.JPEG").write_bytes(b"x")
    cfg = stage_cfg()
    cfg.paths.data_dir = str(tmp_path)
    classes = ClassSpace.from_config(["n01440764"])
    direct = registry.build_eval_dataset("ImageNet", cfg.data, classes)
    via_settings = registry.build_eval_dataset("ImageNet", EvalSettings.from_config(cfg).data, classes)
    assert via_settings.identity() == direct.identity() and len(direct) == 2
