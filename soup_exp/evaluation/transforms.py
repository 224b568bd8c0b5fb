"""Split an eval transform into a cacheable uint8 part and an on-device normalisation.

open_clip, timm and torchvision all build eval transforms of one shape: PIL ops
(Resize, CenterCrop, convert to RGB), then ToTensor (float in [0, 1]), then Normalize.
Everything up to ToTensor is deterministic and yields integers, so it can be cached as
uint8 (4x smaller than float32 and exact); ToTensor's ``/255`` and Normalize are cheap
and run on the device on whole batches. The cached and the uncached paths both use this
split, so they produce bit-identical model inputs.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from soup_exp.errors import SoupExpError


class UnsupportedTransformError(SoupExpError, ValueError):
    """The eval transform is not Compose(PIL ops..., ToTensor, [Normalize])."""


def _transforms():
    """torchvision's transforms, imported when a transform is split: importing torchvision
    costs 1.5 s, which a dry run or a soup stage that evaluates nothing need not pay."""
    from torchvision import transforms

    return transforms


def _is_to_tensor(step: object) -> bool:
    # timm's MaybeToTensor subclasses ToTensor; open_clip reuses timm's or torchvision's.
    return isinstance(step, _transforms().ToTensor) or type(step).__name__ in {"MaybeToTensor", "ToTensor"}


def _is_rgb_convert(step: object) -> bool:
    name = getattr(step, "__name__", type(step).__name__)
    return name in {"MaybeConvertMode", "_convert_to_rgb", "convert_to_rgb", "ConvertToRGB"}


@dataclass(frozen=True)
class SplitTransform:
    """``to_uint8``: PIL image -> uint8 (3, H, W) tensor; ``mean``/``std``: per-channel
    normalisation applied by :meth:`normalize` to float batches on the device."""

    to_uint8: Callable[[object], torch.Tensor]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def key(self) -> str:
        """Identity of the uint8 part, for cache keys (sizes, interpolation, antialias)."""
        return repr(self.to_uint8)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, H, W) on any device -> normalised float32, exactly as
        ToTensor + Normalize would have produced it."""
        x = images.to(torch.float32).div_(255)
        mean, std = _channel_stats(self.mean, self.std, x.device)
        return x.sub_(mean).div_(std)

    def __call__(self, image: object) -> torch.Tensor:
        """The full transform on one image (normalised float), for reference and tests."""
        return self.normalize(self.to_uint8(image).unsqueeze(0))[0]


@functools.lru_cache(maxsize=32)
def _channel_stats(
    mean: tuple[float, ...], std: tuple[float, ...], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(C, 1, 1) float32 tensors on ``device``, made once: a per-batch host->device copy
    of them would synchronise the stream and stall the pipeline."""
    with torch.inference_mode(False):
        return tuple(torch.tensor(v, dtype=torch.float32, device=device).view(-1, 1, 1) for v in (mean, std))


def _as_list(values: Sequence[float] | torch.Tensor | float, channels: int = 3) -> tuple[float, ...]:
    if isinstance(values, torch.Tensor):
        values = values.flatten().tolist()
    if isinstance(values, int | float):
        values = [values] * channels
    return tuple(float(v) for v in values)


def _split_compose(preprocess: object) -> SplitTransform:
    T = _transforms()
    steps = list(preprocess.transforms)
    tensor_at = [i for i, s in enumerate(steps) if _is_to_tensor(s)]
    if len(tensor_at) != 1:
        raise UnsupportedTransformError(
            f"eval transform must contain exactly one ToTensor/MaybeToTensor step, got {preprocess!r}"
        )
    pil_steps, tensor_steps = steps[: tensor_at[0]], steps[tensor_at[0] + 1 :]
    for step in pil_steps:
        if not (isinstance(step, (T.Resize, T.CenterCrop, T.Grayscale)) or _is_rgb_convert(step)):
            raise UnsupportedTransformError(
                f"eval transform step {step!r} is not a deterministic PIL step (Resize, CenterCrop, "
                f"convert-RGB); cannot split {preprocess!r} into a cacheable uint8 part"
            )
    if len(tensor_steps) > 1 or (tensor_steps and not isinstance(tensor_steps[0], T.Normalize)):
        raise UnsupportedTransformError(
            f"after ToTensor the eval transform may only hold one Normalize, got {tensor_steps!r}"
        )
    if tensor_steps:
        mean, std = _as_list(tensor_steps[0].mean), _as_list(tensor_steps[0].std)
    else:
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    return SplitTransform(T.Compose([*pil_steps, T.PILToTensor()]), mean, std)


def _split_torchvision_preset(preset: torch.nn.Module) -> SplitTransform:
    """torchvision's weight presets (``ImageClassification``) as the same split."""
    T = _transforms()
    resize = T.Resize(preset.resize_size, interpolation=preset.interpolation, antialias=preset.antialias)
    to_uint8 = T.Compose([resize, T.CenterCrop(preset.crop_size), T.PILToTensor()])
    return SplitTransform(to_uint8, _as_list(preset.mean), _as_list(preset.std))


_SPLITTERS: dict[str, Callable[[object], SplitTransform]] = {
    "Compose": _split_compose,
    "ImageClassification": _split_torchvision_preset,
}


def split_transform(preprocess: object) -> SplitTransform:
    """Split ``preprocess`` (open_clip / timm / torchvision eval transform) into the
    uint8 part and the normalisation; a ``SplitTransform`` passes through unchanged."""
    if isinstance(preprocess, SplitTransform):
        return preprocess
    splitter = _SPLITTERS.get(type(preprocess).__name__)
    if splitter is None:
        raise UnsupportedTransformError(
            f"cannot split eval transform of type {type(preprocess).__name__}: expected a "
            f"torchvision Compose(Resize, CenterCrop, [convert RGB], ToTensor, Normalize) or a "
            f"torchvision ImageClassification preset, got {preprocess!r}"
        )
    return splitter(preprocess)

