from __future__ import annotations

import pytest
import torch
from models_testdata import tiny_clip_cfg
from torch import nn

from soup_exp.artifacts import ArtifactError, CheckpointMismatchError
from soup_exp.models import ImageClassifier, build_classifier, load_classifier
from soup_exp.utils.io import atomic_save_safetensors


class Scaled(nn.Module):
    def __init__(self, scale: float) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 3)
        self.scale = scale

    def forward(self, x):
        return self.proj(x) * self.scale


def test_state_dict_keys_and_normalised_forward():
    torch.manual_seed(0)
    encoder, head = Scaled(1.0), nn.Linear(3, 5)
    model = ImageClassifier(encoder, head)
    assert sorted(model.state_dict()) == ["head.bias", "head.weight", "image_encoder.proj.bias", "image_encoder.proj.weight"]
    x = torch.randn(6, 4)
    expected = head(nn.functional.normalize(encoder(x), dim=-1))
    torch.testing.assert_close(model(x), expected)
    encoder.scale = 7.0  # the head only sees directions, not feature norms
    torch.testing.assert_close(model(x), expected)
    assert not torch.allclose(ImageClassifier(encoder, head, normalize=False)(x), expected)


def test_skeleton_of_vit_b32_needs_no_download(monkeypatch):
    import open_clip

    def no_network(*args, **kwargs):
        raise AssertionError("the skeleton must not download")

    monkeypatch.setattr(open_clip.factory, "download_pretrained", no_network)
    cfg = dict(source="open_clip", name="ViT-B-32", pretrained="openai", cache_dir=None)
    model, backbone = build_classifier(cfg, num_classes=10, pretrained=False)
    assert backbone.model_id == "open_clip:ViT-B-32:openai"
    assert model.head.weight.shape == (10, 512)
    # the openai tag's QuickGELU is applied even without weights, so soups evaluate correctly
    assert any(type(m).__name__ == "QuickGELU" for m in model.image_encoder.modules())


def test_load_classifier_roundtrip_and_key_errors(tmp_path):
    cfg = tiny_clip_cfg(None)
    model, _ = build_classifier(cfg, num_classes=4)
    with torch.no_grad():
        model.head.weight.normal_()
    state = model.state_dict()
    atomic_save_safetensors(state, tmp_path / "run" / "model.safetensors")
    loaded = load_classifier(tmp_path / "run", cfg, num_classes=4)
    for key, value in loaded.state_dict().items():
        torch.testing.assert_close(value, state[key])

    broken = dict(state)
    broken.pop("head.bias")
    broken["head.extra"] = torch.zeros(1)
    atomic_save_safetensors(broken, tmp_path / "broken.safetensors")
    with pytest.raises(CheckpointMismatchError, match=r"missing keys: head\.bias(.|\n)*unexpected keys: head\.extra"):
        load_classifier(tmp_path / "broken.safetensors", cfg, num_classes=4)
    with pytest.raises(CheckpointMismatchError, match=r"head\.weight: file \(4, 64\) vs model \(7, 64\)"):
        load_classifier(tmp_path / "run", cfg, num_classes=7)
    with pytest.raises(ArtifactError, match="model.safetensors"):
        load_classifier(tmp_path / "empty_dir_that_is_missing", cfg, num_classes=4)
    (tmp_path / "weights.pt").write_bytes(b"")
    with pytest.raises(ArtifactError, match="safetensors"):
        load_classifier(tmp_path / "weights.pt", cfg, num_classes=4)
