from __future__ import annotations

import open_clip
import pytest
import torch
from models_testdata import accuracy, tiny_clip_cfg
from PIL import Image

import soup_exp.demo.pretrain as pretrain
from soup_exp.models import ImageClassifier, build_backbone, zeroshot_head
from soup_exp.utils.io import read_json


def zeroshot_accuracy(cfg: dict, data: dict) -> float:
    backbone = build_backbone(cfg)
    model = ImageClassifier(backbone.image_encoder, zeroshot_head(backbone, data["classnames"])).eval()
    images = torch.stack([backbone.preprocess_val(Image.open(p).convert("RGB")) for p, _ in data["test"]])
    labels = torch.tensor([label for _, label in data["test"]])
    with torch.no_grad():
        return accuracy(model(images), labels)


def test_pretraining_writes_an_open_clip_checkpoint_and_lifts_zeroshot(pretrained_tiny_clip, shapes_data):
    path = pretrained_tiny_clip["pretrained"]
    sidecar = read_json(path + ".json")
    assert sidecar["settings"]["epochs"] == 2 and sidecar["stats"]["final_loss"] < sidecar["stats"]["first_loss"]
    # open_clip itself loads the cached file as a local pretrained checkpoint
    model = open_clip.create_model("soup-tiny-vit", pretrained=path)
    from safetensors.torch import load_file

    saved = load_file(path)
    assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())

    chance = 1 / len(shapes_data["classnames"])
    torch.manual_seed(0)
    random_init = zeroshot_accuracy(tiny_clip_cfg(None), shapes_data)
    pretrained = zeroshot_accuracy(pretrained_tiny_clip, shapes_data)
    assert pretrained > max(2.5 * chance, random_init + 0.2), (pretrained, random_init)


def test_second_call_is_cached_and_settings_change_retrains(pretrained_tiny_clip, shapes_data, monkeypatch, tmp_path):
    def must_not_run(*args, **kwargs):
        raise AssertionError("pretraining ran again although the cache is valid")

    with monkeypatch.context() as patch:
        patch.setattr(pretrain, "pretrain_clip", must_not_run)
        assert str(pretrain.ensure_pretrained(pretrained_tiny_clip, shapes_data["captions"])) == pretrained_tiny_clip["pretrained"]

    cfg = tiny_clip_cfg(str(tmp_path / "w.safetensors"), epochs=1)
    pretrain.ensure_pretrained(cfg, shapes_data["captions"], progress=False)
    first = (tmp_path / "w.safetensors").stat().st_mtime_ns
    cfg["pretrain"]["seed"] = 1
    pretrain.ensure_pretrained(cfg, shapes_data["captions"], progress=False)
    assert (tmp_path / "w.safetensors").stat().st_mtime_ns != first
    assert read_json(tmp_path / "w.safetensors.json")["settings"]["seed"] == 1


def test_pretrain_input_errors(tmp_path, shapes_data):
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("path,caption\nx.jpg,a cat\n")
    cfg = tiny_clip_cfg(str(tmp_path / "w.safetensors"))
    with pytest.raises(ValueError, match="filepath.*title|title.*filepath"):
        pretrain.ensure_pretrained(cfg, bad_csv)
    with pytest.raises(FileNotFoundError, match="caption file not found"):
        pretrain.ensure_pretrained(cfg, tmp_path / "missing.csv")
    with pytest.raises(FileNotFoundError, match="model.pretrain is not set"):
        pretrain.ensure_pretrained({**cfg, "pretrain": None}, shapes_data["captions"])
    with pytest.raises(ValueError, match="local .safetensors path"):
        pretrain.ensure_pretrained({**cfg, "pretrained": "openai"}, shapes_data["captions"])
    with pytest.raises(ValueError, match="unknown model.pretrain keys"):
        pretrain.ensure_pretrained({**cfg, "pretrain": {"epochz": 3}}, shapes_data["captions"])
