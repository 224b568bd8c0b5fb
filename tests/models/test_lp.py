from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from models_testdata import accuracy

import soup_exp.training.lp as lp
from soup_exp.models import build_backbone, zeroshot_head


def test_features_are_cached_by_weights_and_files(pretrained_tiny_clip, shapes_data, tmp_path, monkeypatch):
    backbone = build_backbone(pretrained_tiny_clip)
    encoder, samples, cache = backbone.image_encoder, shapes_data["train"], tmp_path / "features.safetensors"
    features, labels = lp.extract_features(encoder, samples, backbone.preprocess_val, 32, "cpu", cache, progress=False)
    assert features.shape == (len(samples), 64) and labels.tolist() == [label for _, label in samples]

    with monkeypatch.context() as patch:
        patch.setattr(lp, "DataLoader", lambda *a, **k: pytest.fail("recomputed despite a valid cache"))
        cached, cached_labels = lp.extract_features(encoder, samples, backbone.preprocess_val, 32, "cpu", cache, progress=False)
    torch.testing.assert_close(cached, features)
    assert torch.equal(cached_labels, labels)

    with torch.no_grad():
        encoder.proj.mul_(2.0)  # other weights -> other key -> recomputed
    doubled, _ = lp.extract_features(encoder, samples, backbone.preprocess_val, 32, "cpu", cache, progress=False)
    torch.testing.assert_close(doubled, 2 * features, rtol=1e-4, atol=1e-5)
    fewer, _ = lp.extract_features(encoder, samples[:10], backbone.preprocess_val, 32, "cpu", cache, progress=False)
    assert len(fewer) == 10


def test_linear_probe_beats_zeroshot_on_held_out(pretrained_tiny_clip, shapes_data):
    backbone = build_backbone(pretrained_tiny_clip)
    extract = lambda samples: lp.extract_features(  # noqa: E731
        backbone.image_encoder, samples, backbone.preprocess_val, 64, "cpu", progress=False)
    train_x, train_y = extract(shapes_data["train"])
    test_x, test_y = extract(shapes_data["test"])
    zeroshot = zeroshot_head(backbone, shapes_data["classnames"])
    settings = dict(epochs=30, lr=1e-2, weight_decay=0.0, batch_size=256, seed=0)
    zs_before = zeroshot.weight.clone()

    probe = lp.train_linear_probe(train_x, train_y, len(shapes_data["classnames"]), init=zeroshot, **settings)
    scratch = lp.train_linear_probe(train_x, train_y, len(shapes_data["classnames"]), init=None, **settings)
    held_out = F.normalize(test_x, dim=-1)
    with torch.no_grad():
        zs_acc, lp_acc, scratch_acc = (accuracy(h(held_out), test_y) for h in (zeroshot, probe, scratch))
    assert torch.equal(zeroshot.weight, zs_before)  # the init is copied, not trained in place
    assert lp_acc >= zs_acc + 0.1 and scratch_acc >= zs_acc + 0.05, (zs_acc, lp_acc, scratch_acc)
    again = lp.train_linear_probe(train_x, train_y, len(shapes_data["classnames"]), init=zeroshot, **settings)
    torch.testing.assert_close(again.weight, probe.weight)


def test_linear_probe_input_errors():
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        lp.train_linear_probe(torch.randn(4, 8), torch.tensor([0, 1, 2, 3]), 3, init=None,
                              epochs=1, lr=1e-2, weight_decay=0.0, batch_size=2, seed=0)
    with pytest.raises(ValueError, match="init head"):
        lp.train_linear_probe(torch.randn(4, 8), torch.tensor([0, 1, 2, 0]), 3, init=torch.nn.Linear(8, 5),
                              epochs=1, lr=1e-2, weight_decay=0.0, batch_size=2, seed=0)
