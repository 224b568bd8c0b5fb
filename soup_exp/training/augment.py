"""Training-time augmentation: the fine-tuning transform (a base transform plus timm
RandAugment) and timm Mixup/CutMix on batches.

The authors never released the transform of their sweep; their ``finetune.py`` offers
CLIP's preprocessing (its default) or ``--timm-aug``: timm's ``transforms_imagenet_train``
with CLIP's mean and std. ``train.base_transform`` picks one of ``BASE_TRANSFORMS``:
``timm`` (``--timm-aug``; RandAugment as timm's own ``auto_augment``, which replaces its
colour jitter), ``clip`` (their default: CLIP's eval preprocessing, no random crop or
flip) or ``open_clip`` (open_clip's train transform, a mild random-resized crop).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from PIL import Image, ImageOps
from timm.data import auto_augment
from timm.data.auto_augment import rand_augment_transform
from timm.data.mixup import Mixup
from torchvision import transforms as T

from soup_exp.errors import ConfigError
from soup_exp.training.settings import TrainSettings, validate_aug

_TENSOR_STEPS = (T.ToTensor, T.PILToTensor)


def _posterize(img: Image.Image, bits_to_keep: int, **_) -> Image.Image:
    """timm's posterize, with the 0-bit case (low RandAugment magnitudes) kept working.

    timm maps magnitudes below 2.5 to "keep 0 bits"; Pillow >= 10 rejects that value,
    older Pillow (the authors' environment) returned a black image. We do the latter.
    """
    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:
        return Image.new(img.mode, img.size)
    return ImageOps.posterize(img, bits_to_keep)


_POSTERIZE_OPS = ("Posterize", "PosterizeIncreasing", "PosterizeOriginal")


@contextlib.contextmanager
def _zero_bit_posterize() -> Iterator[None]:
    """timm's op table with our posterize, only while RandAugment ops are built: each op
    binds its function when created, so timm stays untouched for everyone else."""
    table = auto_augment.NAME_TO_OP
    saved = {name: table[name] for name in _POSTERIZE_OPS if name in table}
    table.update({name: _posterize for name in saved})
    try:
        yield
    finally:
        table.update(saved)


def with_randaugment(preprocess: Callable, aug: str | None) -> Callable:
    """Insert RandAugment (a PIL op) just before the backbone's tensor conversion.

    The crop/resize and normalisation stay the backbone's (open_clip or timm), so an
    augmented run differs from a plain one only by RandAugment.
    """
    validate_aug(aug)
    if aug is None or str(aug).lower() in {"none", "null", ""}:
        return preprocess
    if not isinstance(preprocess, T.Compose):
        raise ConfigError(
            f"train.aug={aug!r} needs the backbone's train transform to be a torchvision Compose, "
            f"got {type(preprocess).__name__}"
        )
    steps = list(preprocess.transforms)
    at = next((i for i, t in enumerate(steps) if isinstance(t, _TENSOR_STEPS)), None)
    if at is None:
        raise ConfigError("train.aug: the backbone's train transform has no ToTensor step to insert RandAugment before")
    with _zero_bit_posterize():
        randaugment = rand_augment_transform(str(aug), _randaug_hparams(steps))
    steps.insert(at, randaugment)
    return T.Compose(steps)


def _randaug_hparams(steps: list) -> dict:
    """timm's defaults, with the fill colour and translation scaled to this backbone."""
    size, mean, _ = _size_and_stats(steps)
    return {"translate_const": int(size * 0.45), "img_mean": tuple(round(255 * m) for m in mean)}


def _size_and_stats(steps: list) -> tuple[int, tuple[float, ...], tuple[float, ...]]:
    """Image size, mean and std of a torchvision pipeline (CLIP's values when absent)."""
    size = 224
    mean, std = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
    for t in steps:
        if isinstance(t, T.Normalize):
            mean, std = tuple(float(m) for m in t.mean), tuple(float(v) for v in t.std)
        if isinstance(t, T.RandomResizedCrop | T.CenterCrop | T.Resize) and getattr(t, "size", None):
            s = t.size
            size = int(s[0] if isinstance(s, list | tuple) else s)
    return size, mean, std


def _timm_imagenet_train(backbone, aug: str | None) -> Callable:
    """The authors' ``--timm-aug``: ``transforms_imagenet_train(img_size, mean, std)`` at the
    backbone's size and CLIP statistics, with RandAugment as timm's ``auto_augment``."""
    from timm.data.transforms_factory import transforms_imagenet_train

    validate_aug(aug)
    steps = list(getattr(backbone.preprocess_val, "transforms", []))
    size, mean, std = _size_and_stats(steps)
    auto_augment = None if aug is None or str(aug).lower() in {"none", "null", ""} else str(aug)
    return transforms_imagenet_train(img_size=size, mean=mean, std=std, auto_augment=auto_augment)


BASE_TRANSFORMS: dict[str, Callable[[Any, str | None], Callable]] = {
    "open_clip": lambda backbone, aug: with_randaugment(backbone.preprocess_train, aug),
    "clip": lambda backbone, aug: with_randaugment(backbone.preprocess_val, aug),
    "timm": _timm_imagenet_train,
}


def train_transform(backbone, base: str, aug: str | None) -> Callable:
    """The fine-tuning transform: ``base`` (see ``BASE_TRANSFORMS``) with RandAugment ``aug``."""
    if base not in BASE_TRANSFORMS:
        raise ConfigError(f"train.base_transform={base!r}: expected one of {', '.join(BASE_TRANSFORMS)}")
    return BASE_TRANSFORMS[base](backbone, aug)


def build_mixup(settings: TrainSettings, num_classes: int) -> Mixup | None:
    """timm Mixup/CutMix (label smoothing folded into its soft targets), or None when off."""
    if settings.mix <= 0 and settings.cutmix <= 0:
        return None
    return Mixup(
        mixup_alpha=settings.mix,
        cutmix_alpha=settings.cutmix,
        label_smoothing=settings.label_smoothing,
        num_classes=num_classes,
    )


def build_loss(settings: TrainSettings, mixing: bool) -> torch.nn.Module:
    """Soft-target cross-entropy under mixup (targets already smoothed), else CE with smoothing."""
    if mixing:
        from timm.loss import SoftTargetCrossEntropy

        return SoftTargetCrossEntropy()
    return torch.nn.CrossEntropyLoss(label_smoothing=settings.label_smoothing)
