"""The two training choices the authors never released, as explicit options:
the fine-tuning base transform and the LP-init recipe."""

from __future__ import annotations

import torch
from hydra import compose, initialize_config_dir
from PIL import Image
from timm.data.auto_augment import RandAugment
from timm.data.transforms_factory import transforms_imagenet_train
from torchvision import transforms as T

from soup_exp.errors import ConfigError
from soup_exp.models import build_backbone
from soup_exp.stages.entry import packaged_config_dir
from soup_exp.training.augment import BASE_TRANSFORMS, train_transform
from soup_exp.training.lp import train_linear_probe
from soup_exp.training.settings import BASE_TRANSFORMS as BASE_TRANSFORM_NAMES
from soup_exp.training.settings import train_settings

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _backbone():
    return build_backbone({"source": "open_clip", "name": "soup-tiny-vit", "pretrained": None}, pretrained=False)


def _kinds(transform) -> list[str]:
    return [type(t).__name__ for t in transform.transforms]


def test_timm_base_is_the_authors_timm_aug():
    backbone = _backbone()
    # finetune.py --timm-aug: transforms_imagenet_train(img_size=input_resolution, mean=CLIP, std=CLIP)
    theirs = transforms_imagenet_train(img_size=32, mean=CLIP_MEAN, std=CLIP_STD)
    ours = train_transform(backbone, "timm", None)
    assert repr(ours) == repr(theirs) and "ColorJitter" in _kinds(ours)
    augmented = train_transform(backbone, "timm", "rand-m9-n2")
    assert any(isinstance(t, RandAugment) for t in augmented.transforms)
    assert "ColorJitter" not in _kinds(augmented)  # timm drops colour jitter under RandAugment
    image = Image.new("RGB", (48, 40), (120, 30, 200))
    assert augmented(image).shape == (3, 32, 32)


def test_clip_base_is_the_eval_preprocessing_and_open_clip_the_default():
    backbone = _backbone()
    clip = train_transform(backbone, "clip", None)
    assert clip is backbone.preprocess_val  # the authors' finetune.py default: `preprocess`
    with_aug = train_transform(backbone, "clip", "rand-m5-n1")
    kinds = _kinds(with_aug)
    assert kinds.index("RandAugment") == kinds.index("MaybeToTensor") - 1
    assert not any(isinstance(t, T.RandomResizedCrop) for t in with_aug.transforms)
    assert train_transform(backbone, "open_clip", None) is backbone.preprocess_train
    assert set(BASE_TRANSFORMS) == set(BASE_TRANSFORM_NAMES)
    try:
        train_transform(backbone, "torchvision", None)
    except ConfigError as err:
        assert "train.base_transform='torchvision'" in str(err)
    else:
        raise AssertionError("an unknown base transform must be refused")


def _finetune_cfg(*overrides: str):
    with initialize_config_dir(config_dir=str(packaged_config_dir()), version_base="1.3"):
        return compose(config_name="finetune", overrides=list(overrides))


def test_paper_sweeps_use_timm_and_the_lp_recipe_is_a_group_choice():
    assert _finetune_cfg().train.base_transform == "open_clip"
    assert _finetune_cfg("sweep=paper_vitb32").train.base_transform == "timm"
    assert _finetune_cfg("sweep=replay").train.base_transform == "timm"
    wiseft = train_settings(_finetune_cfg("sweep=lp_init", "train/lp=wiseft").train)
    assert (wiseft.lp.lr, wiseft.lp.weight_decay, wiseft.lp.batch_size, wiseft.lp.warmup_steps) == (1e-3, 0.1, 128, 500)
    assert wiseft.hparams()["lp"]["warmup_steps"] == 500  # recorded in ingredient.json
    default = train_settings(_finetune_cfg("sweep=lp_init").train)
    assert (default.lp.weight_decay, default.lp.warmup_steps) == (0.0, 0)
    try:
        train_settings(_finetune_cfg("train.base_transform=nope").train)
    except ConfigError as err:
        assert "train.base_transform='nope'" in str(err)
    else:
        raise AssertionError("validated at config time")


def test_lp_warmup_ramps_the_learning_rate(monkeypatch):
    g = torch.Generator().manual_seed(0)
    features, labels = torch.randn(640, 8, generator=g), torch.randint(0, 3, (640,), generator=g)
    seen: list[float] = []
    step = torch.optim.AdamW.step

    def recording(self, *args, **kwargs):
        seen.append(self.param_groups[0]["lr"])
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", recording)
    common = dict(epochs=1, lr=0.5, weight_decay=0.0, batch_size=64, seed=0)  # 10 steps
    train_linear_probe(features, labels, 3, init=None, **common)
    cold, seen[:] = list(seen), []
    train_linear_probe(features, labels, 3, init=None, warmup_steps=10, **common)
    assert cold[0] == 0.5 and cold[-1] < 0.05  # cosine from lr, as before
    assert seen[:3] == [0.25, 0.5, 0.5]  # warmup capped at 20% of the run (2 steps), then cosine
    assert seen[-1] < 0.05
