"""A researcher's own backbone: any module that maps images to feature vectors."""

from __future__ import annotations

from collections.abc import Mapping

from torch import nn
from torchvision import transforms as T

from soup_exp.models import Backbone


def pooled_conv(model_cfg: Mapping, pretrained: bool) -> Backbone:
    """A small conv net (``model.width`` channels) with the usual 224 px preprocessing."""
    width = int(model_cfg["width"])
    encoder = nn.Sequential(nn.Conv2d(3, width, 7, stride=4), nn.GELU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    preprocess = T.Compose([T.Resize(224), T.CenterCrop(224), T.ToTensor(),
                            T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    return Backbone(image_encoder=encoder, preprocess_train=preprocess, preprocess_val=preprocess,
                    feature_dim=width, model_id=f"my_backbones:pooled_conv:w{width}")
