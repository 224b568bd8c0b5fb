from __future__ import annotations

import open_clip
import pytest
import torch
from models_testdata import tiny_clip_cfg

from soup_exp.models import build_backbone, zeroshot_head
from soup_exp.models.zeroshot import resolve_templates


def test_zeroshot_head_uses_open_clips_builder(monkeypatch):
    backbone = build_backbone({**tiny_clip_cfg(None), "zeroshot_templates": "openai"}, pretrained=False)
    calls = []
    real_builder = open_clip.build_zero_shot_classifier

    def spy(*args, **kwargs):
        calls.append(kwargs)
        result = real_builder(*args, **kwargs)
        calls[-1]["result"] = result
        return result

    monkeypatch.setattr(open_clip, "build_zero_shot_classifier", spy)
    head = zeroshot_head(backbone, ["goldfish", "tree frog", "school bus"])
    assert len(calls) == 1 and len(calls[0]["templates"]) == 80  # the OpenAI set
    assert calls[0]["classnames"] == ["goldfish", "tree frog", "school bus"]
    expected = backbone.clip_model.logit_scale.exp().item() * calls[0]["result"].T
    torch.testing.assert_close(head.weight, expected)
    assert head.weight.shape == (3, backbone.feature_dim) and torch.all(head.bias == 0)
    assert backbone.clip_model.training  # state restored


def test_template_sets():
    assert len(resolve_templates(None)) == 80
    assert len(resolve_templates("simple")) == 7
    assert [t("cat") for t in resolve_templates(["a {}.", "the {}!"])] == ["a cat.", "the cat!"]
    with pytest.raises(ValueError, match="placeholder"):
        resolve_templates(["no placeholder"])
    with pytest.raises(ValueError, match="unknown template set"):
        resolve_templates("fancy")


def test_timm_backbone_has_no_zeroshot_head():
    backbone = build_backbone(dict(source="timm", name="test_vit", pretrained=None, kwargs=dict(img_size=32)), pretrained=False)
    with pytest.raises(ValueError, match="head_init=lp"):
        zeroshot_head(backbone, ["a", "b"])


def test_head_for_many_classes_has_a_labelled_progress_bar_and_the_same_numbers(capsys):
    from soup_exp.data.classes import imagenet_classnames

    backbone = build_backbone(tiny_clip_cfg(None), pretrained=False)
    names = list(imagenet_classnames()[:150])
    head = zeroshot_head(backbone, names, templates="simple", progress=True)
    assert "zero-shot head: 150 classes x 7 prompts" in capsys.readouterr().err
    backbone.clip_model.eval()
    whole = open_clip.build_zero_shot_classifier(backbone.clip_model, backbone.tokenizer, classnames=names,
                                                 templates=resolve_templates("simple"))
    scale = backbone.clip_model.logit_scale.exp().item()
    torch.testing.assert_close(head.weight, scale * whole.T, rtol=0, atol=0)
    zeroshot_head(backbone, names[:3], templates="simple")  # few classes: no bar by default
    assert "zero-shot head" not in capsys.readouterr().err
