"""The image classifier every ingredient and soup is: image tower -> L2 norm -> linear head.

Its state dict (``image_encoder.*``, ``head.weight``, ``head.bias``) is the ingredient
weight format, so soups average exactly these keys.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from soup_exp.errors import SoupExpError
from soup_exp.models.backbones import Backbone, build_backbone

WEIGHTS_FILE = "model.safetensors"


class ImageClassifier(nn.Module):
    def __init__(self, image_encoder: nn.Module, head: nn.Linear, normalize: bool = True) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.head = head
        self.normalize = normalize

    def features(self, images: torch.Tensor) -> torch.Tensor:
        features = self.image_encoder(images)
        return F.normalize(features, dim=-1) if self.normalize else features

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


class CheckpointMismatchError(SoupExpError, RuntimeError):
    """A weights file does not fit the classifier described by the model config."""


def build_classifier(
    model_cfg: Mapping, num_classes: int, pretrained: bool = False
) -> tuple[ImageClassifier, Backbone]:
    """Classifier with a zero head; with ``pretrained=False`` nothing is downloaded or read.

    This is the skeleton that ingredient and soup state dicts are loaded into.
    """
    backbone = build_backbone(model_cfg, pretrained=pretrained)
    head = nn.Linear(backbone.feature_dim, num_classes)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    return ImageClassifier(backbone.image_encoder, head), backbone


def weights_path(dir_or_file: str | os.PathLike) -> Path:
    """``<dir>/model.safetensors`` for a run directory, else the file itself (safetensors only)."""
    path = Path(dir_or_file)
    path = path / WEIGHTS_FILE if path.is_dir() else path
    if not path.is_file():
        raise FileNotFoundError(f"no weights at {path} (expected a run directory holding {WEIGHTS_FILE}, or a .safetensors file)")
    if path.suffix != ".safetensors":
        raise ValueError(f"{path} is not a .safetensors file; soup-exp reads weights only as safetensors (never pickles)")
    return path


def load_state_dict_strict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    """``load_state_dict`` whose error names the missing and unexpected keys and shapes."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    wrong_shape = [
        f"{k}: file {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(state_dict))
        if tuple(own[k].shape) != tuple(state_dict[k].shape)
    ]
    if missing or unexpected or wrong_shape:
        def show(keys: list[str]) -> str:
            return ", ".join(keys[:8]) + (f" ... (+{len(keys) - 8} more)" if len(keys) > 8 else "") or "none"

        raise CheckpointMismatchError(
            f"{source} does not match the classifier of this model config.\n"
            f"  missing keys: {show(missing)}\n  unexpected keys: {show(unexpected)}\n"
            f"  shape mismatches: {show(wrong_shape)}\n"
            "Check that model=... and the class subset are the ones the weights were trained with."
        )
    model.load_state_dict(state_dict, strict=True)


def load_classifier(dir_or_file: str | os.PathLike, model_cfg: Mapping, num_classes: int) -> ImageClassifier:
    """Build the skeleton and load an ingredient/soup ``model.safetensors`` into it."""
    from safetensors.torch import load_file

    path = weights_path(dir_or_file)
    model, _ = build_classifier(model_cfg, num_classes, pretrained=False)
    load_state_dict_strict(model, load_file(str(path)), str(path))
    return model
