from __future__ import annotations

import json

import open_clip
import torch
from models_testdata import tiny_clip_cfg

import soup_exp.models
from soup_exp.models import build_backbone


def test_tiny_clip_is_an_open_clip_architecture():
    assert "soup-tiny-vit" in open_clip.list_models()
    shipped = json.loads((soup_exp.models.MODEL_CONFIG_DIR / "soup-tiny-vit.json").read_text())
    assert open_clip.get_model_config("soup-tiny-vit") == shipped
    model, preprocess_train, preprocess_val = open_clip.create_model_and_transforms("soup-tiny-vit")
    tokenizer = open_clip.get_tokenizer("soup-tiny-vit")
    long_prompt = "a low resolution photo of a great white shark swimming next to a very large blue boat"
    tokens = tokenizer(["a photo of a goldfish.", long_prompt])
    assert tokens.shape == (2, 16) and tokens[1, -1] == tokenizer.eot_token_id  # truncated, still pooled at EOT
    with torch.no_grad():
        image_features = model.encode_image(torch.randn(3, 3, 32, 32))
        text_features = model.encode_text(tokens)
    assert image_features.shape == (3, 64) and text_features.shape == (2, 64)
    assert sum(p.numel() for p in model.visual.parameters()) < 1_000_000  # sized for a 2-core CPU


def test_tiny_clip_backbone_without_weights():
    backbone = build_backbone(tiny_clip_cfg(None), pretrained=False)
    assert backbone.feature_dim == 64
    assert backbone.model_id == "open_clip:soup-tiny-vit:random"
    assert backbone.clip_model is not None and backbone.image_encoder is backbone.clip_model.visual
    from PIL import Image

    image = Image.new("RGB", (64, 48), (10, 200, 30))
    assert backbone.preprocess_val(image).shape == (3, 32, 32)
    assert backbone.preprocess_train(image).shape == (3, 32, 32)
