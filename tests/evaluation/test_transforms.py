import numpy as np
import open_clip
import pytest
import timm
import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.models import ResNet18_Weights

from soup_exp.evaluation.transforms import (
    SplitTransform,
    UnsupportedTransformError,
    split_transform,
)


def _random_images(n=3):
    rng = np.random.default_rng(0)
    sizes = [(37, 29), (50, 64), (33, 33)]
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in sizes[:n]]


def _reference_transforms():
    open_clip_val = open_clip.image_transform(24, is_train=False)
    timm_cfg = timm.data.resolve_data_config({"input_size": (3, 24, 24), "crop_pct": 0.875})
    timm_val = timm.data.create_transform(**timm_cfg, is_training=False)
    torchvision_preset = ResNet18_Weights.DEFAULT.transforms(crop_size=24, resize_size=28)
    return {"open_clip": open_clip_val, "timm": timm_val, "torchvision": torchvision_preset}


@pytest.mark.parametrize("library", ["open_clip", "timm", "torchvision"])
def test_split_reproduces_the_full_transform_exactly(library):
    preprocess = _reference_transforms()[library]
    split = split_transform(preprocess)
    for image in _random_images():
        uint8 = split.to_uint8(image)
        assert uint8.dtype == torch.uint8 and uint8.shape == (3, 24, 24)
        expected = preprocess(image)
        assert torch.equal(split.normalize(uint8.unsqueeze(0))[0], expected)


def test_split_key_changes_with_the_transform():
    a = split_transform(T.Compose([T.Resize(24), T.CenterCrop(24), T.ToTensor()]))
    b = split_transform(T.Compose([T.Resize(32), T.CenterCrop(24), T.ToTensor()]))
    assert a.key != b.key
    assert a.mean == (0.0, 0.0, 0.0) and a.std == (1.0, 1.0, 1.0)


def test_split_transform_passes_through():
    split = SplitTransform(T.PILToTensor(), (0.5,) * 3, (0.5,) * 3)
    assert split_transform(split) is split


@pytest.mark.parametrize(
    "preprocess, message",
    [
        (T.Compose([T.RandomResizedCrop(24), T.ToTensor()]), "not a deterministic PIL step"),
        (T.Compose([T.Resize(24), T.CenterCrop(24)]), "exactly one ToTensor"),
        (T.Compose([T.ToTensor(), T.Normalize((0.5,), (0.5,)), T.Normalize((0.5,), (0.5,))]), "only hold one Normalize"),
        (lambda image: image, "cannot split eval transform of type function"),
    ],
)
def test_unknown_transform_shapes_fail_clearly(preprocess, message):
    with pytest.raises(UnsupportedTransformError, match=message):
        split_transform(preprocess)
