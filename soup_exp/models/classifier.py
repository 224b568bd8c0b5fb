"""The image classifier every ingredient and soup is: image tower -> L2 norm -> linear head.

Its state dict (``image_encoder.*``, ``head.weight``, ``head.bias``) is the ingredient
weight format, so soups average exactly these keys.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from soup_exp.models.backbones import Backbone, build_backbone


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


def load_classifier(dir_or_file: str | os.PathLike, model_cfg: Mapping, num_classes: int) -> ImageClassifier:
    """Build the skeleton and load an ingredient/soup ``model.safetensors`` into it."""
    from soup_exp.artifacts import load_weights

    model, _ = build_classifier(model_cfg, num_classes, pretrained=False)
    return load_weights(model, dir_or_file)
