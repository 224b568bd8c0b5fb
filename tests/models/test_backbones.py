from __future__ import annotations

import open_clip
import pytest
import timm
import torch
import yaml
from models_testdata import tiny_clip_cfg
from safetensors.torch import save_file

from soup_exp.models import BackboneLoadError, build_backbone
from soup_exp.stages.entry import packaged_config_dir

CONF_MODEL = packaged_config_dir() / "model"


def timm_cfg(pretrained=None, **extra) -> dict:
    return dict(source="timm", name="test_vit", pretrained=pretrained, cache_dir=None,
                grad_checkpointing=False, kwargs=dict(img_size=32), **extra)


def test_timm_backbone_random_init():
    backbone = build_backbone(timm_cfg(), pretrained=False)
    assert backbone.feature_dim == 64
    assert backbone.model_id == "timm:test_vit:random"
    assert backbone.clip_model is None and backbone.tokenizer is None
    assert backbone.image_encoder(torch.randn(2, 3, 32, 32)).shape == (2, 64)
    from PIL import Image

    assert backbone.preprocess_val(Image.new("RGB", (50, 40))).shape == (3, 32, 32)


def test_timm_backbone_loads_a_local_file(tmp_path):
    source = timm.create_model("test_vit", num_classes=0, img_size=32)
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(tmp_path / "tv.safetensors"))
    backbone = build_backbone(timm_cfg(str(tmp_path / "tv.safetensors")))
    assert backbone.model_id == "timm:test_vit:tv.safetensors"
    loaded = backbone.image_encoder.state_dict()
    assert all(torch.equal(value, loaded[key]) for key, value in source.state_dict().items())


def test_open_clip_local_checkpoint_and_grad_checkpointing(tmp_path):
    model = open_clip.create_model("soup-tiny-vit")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "clip.safetensors"))
    cfg = tiny_clip_cfg(str(tmp_path / "clip.safetensors"))
    cfg["grad_checkpointing"] = True
    backbone = build_backbone(cfg)
    assert all(torch.equal(v, backbone.clip_model.state_dict()[k]) for k, v in model.state_dict().items())
    assert backbone.image_encoder.transformer.grad_checkpointing


@pytest.mark.parametrize("cfg", [
    dict(source="open_clip", name="ViT-B-32", pretrained="no_such_tag"),
    dict(source="timm", name="test_vit", pretrained="no_such_tag"),
])
def test_unknown_tag_names_model_tag_and_offline_fix(cfg):
    with pytest.raises(BackboneLoadError) as error:
        build_backbone(cfg)
    message = str(error.value)
    assert cfg["name"] in message and "no_such_tag" in message and "model.pretrained=" in message


@pytest.mark.parametrize("source,name", [("open_clip", "soup-tiny-vit"), ("timm", "test_vit")])
def test_missing_local_file(source, name, tmp_path):
    missing = str(tmp_path / "nowhere" / "weights.safetensors")
    with pytest.raises(BackboneLoadError, match="local checkpoint file not found") as error:
        build_backbone(dict(source=source, name=name, pretrained=missing))
    assert name in str(error.value) and missing in str(error.value)
    # the skeleton never reads the file
    assert build_backbone(dict(source=source, name=name, pretrained=missing, kwargs=dict(img_size=32) if source == "timm" else {}), pretrained=False)


def test_download_failure_is_explained(monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("Name or service not known")

    monkeypatch.setattr(open_clip.factory, "download_pretrained", offline)
    with pytest.raises(BackboneLoadError, match=r"(?s)ViT-B-32.*openai.*Name or service not known.*model\.pretrained=/path"):
        build_backbone(dict(source="open_clip", name="ViT-B-32", pretrained="openai", cache_dir="/tmp/x"))


def test_unknown_source_and_architecture():
    with pytest.raises(BackboneLoadError, match="model.source='keras'"):
        build_backbone(dict(source="keras", name="x"))
    with pytest.raises(BackboneLoadError, match="unknown open_clip architecture"):
        build_backbone(dict(source="open_clip", name="ViT-Q-99", pretrained=None))


@pytest.mark.parametrize("preset", sorted(p.stem for p in CONF_MODEL.glob("*.yaml")))
def test_presets_name_real_architectures_and_tags(preset):
    cfg = yaml.safe_load((CONF_MODEL / f"{preset}.yaml").read_text())
    assert {"source", "name", "pretrained", "cache_dir", "grad_checkpointing"} <= set(cfg)
    if cfg["source"] == "open_clip":
        import soup_exp.models  # noqa: F401

        assert open_clip.get_model_config(cfg["name"]) is not None
        if "pretrain" in cfg:
            assert str(cfg["pretrained"]).endswith(".safetensors")
        else:
            assert cfg["pretrained"] in open_clip.list_pretrained_tags_by_model(cfg["name"])
    else:
        assert timm.list_pretrained(f"{cfg['name']}.{cfg['pretrained']}")


def test_a_users_backbone_builder_by_target(monkeypatch):
    from pathlib import Path

    from hydra import compose, initialize_config_dir

    from soup_exp.models import build_classifier
    from soup_exp.stages.entry import _search_packaged_configs_after

    user_repo = Path(__file__).resolve().parents[1] / "user_repo"
    monkeypatch.syspath_prepend(str(user_repo))
    _search_packaged_configs_after(user_repo / "conf")
    with initialize_config_dir(config_dir=str(user_repo / "conf"), version_base="1.3"):
        cfg = compose(config_name="evaluate", overrides=["model=pooled_conv"])
    model, backbone = build_classifier(cfg.model, num_classes=5)
    assert backbone.feature_dim == 16 and model.head.weight.shape == (5, 16)
    assert model(torch.zeros(2, 3, 224, 224)).shape == (2, 5)
    with pytest.raises(BackboneLoadError, match="not a soup_exp.models.Backbone"):
        build_backbone({"_target_": "operator.is_", "name": "x"})


def test_the_log_says_what_was_loaded_and_open_clip_stays_quiet(tmp_path, caplog):
    """One line naming the pretrained weights for a pretrained build; a skeleton (weights
    loaded next from an ingredient) logs nothing at INFO, nor does open_clip's narration
    ('No potential checkpoint path found ...') reach the stage's log."""
    import logging

    model = open_clip.create_model("soup-tiny-vit")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "clip.safetensors"))
    cfg = tiny_clip_cfg(str(tmp_path / "clip.safetensors"))
    caplog.clear()
    with caplog.at_level(logging.INFO):
        build_backbone(cfg, pretrained=True)
    infos = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert infos == ["built backbone open_clip:soup-tiny-vit:clip.safetensors with its pretrained weights"]
    caplog.clear()
    with caplog.at_level(logging.INFO):
        build_backbone(cfg, pretrained=False)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO] == []
    assert not any("not loaded" in r.getMessage() or "randomly" in r.getMessage() for r in caplog.records)
