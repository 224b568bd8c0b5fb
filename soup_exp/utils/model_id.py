"""Model ids (``<source>:<name>:<tag or file>``) from a model config, without importing
open_clip or timm: identities and plans need them, and those imports take seconds."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from soup_exp.utils.config import config_get

CHECKPOINT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt", ".npz")


def looks_like_path(pretrained: str) -> bool:
    """A local checkpoint path, as opposed to a pretrained tag like ``openai``."""
    return "/" in pretrained or "\\" in pretrained or pretrained.endswith(CHECKPOINT_SUFFIXES)


def pretrained_label(pretrained: Any) -> str:
    """The pretrained part of a model id: the tag, or a local file's name (machine-independent)."""
    if not pretrained:
        return "random"
    if pretrained is True:
        return "default"
    text = str(pretrained)
    return Path(text).name if looks_like_path(text) else text


def model_id_for(model_cfg: Mapping) -> str:
    """``<source>:<name>:<tag or checkpoint file name>``, e.g. ``open_clip:ViT-B-32:openai``."""
    source = config_get(model_cfg, "_target_") or config_get(model_cfg, "source", "open_clip")
    return f"{source}:{model_cfg['name']}:{pretrained_label(config_get(model_cfg, 'pretrained'))}"
