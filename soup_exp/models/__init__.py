"""Backbones, the image classifier, zero-shot heads and the demo's tiny CLIP.

Importing this package registers ``model_configs/*.json`` (e.g. ``soup-tiny-vit``) with
open_clip, so project architectures are created by the same calls as ``ViT-B-32``.
"""

from pathlib import Path

import open_clip

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
open_clip.add_model_config(MODEL_CONFIG_DIR)

from soup_exp.models.backbones import (  # noqa: E402
    BACKBONE_SOURCES,
    Backbone,
    BackboneLoadError,
    build_backbone,
)
from soup_exp.models.classifier import (  # noqa: E402
    ImageClassifier,
    build_classifier,
    load_classifier,
)
from soup_exp.models.zeroshot import zeroshot_head  # noqa: E402

__all__ = [
    "BACKBONE_SOURCES",
    "MODEL_CONFIG_DIR",
    "Backbone",
    "BackboneLoadError",
    "ImageClassifier",
    "build_backbone",
    "build_classifier",
    "load_classifier",
    "zeroshot_head",
]
