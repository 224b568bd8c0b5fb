"""Pretrained image backbones from open_clip or timm, behind one registry.

A backbone is the image tower plus the transforms it was trained with. open_clip
backbones also keep the whole CLIP model and its tokenizer, because the zero-shot head
is built from the text tower. Every loading failure names the model, the pretrained
value and the offline fix (point ``model.pretrained`` at a local checkpoint file).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from soup_exp.errors import SoupExpError
from soup_exp.utils.config import config_get, to_plain
from soup_exp.utils.model_id import (
    looks_like_path,
    model_id_for,
)

log = logging.getLogger(__name__)

class BackboneLoadError(SoupExpError, RuntimeError):
    """A backbone could not be created or its pretrained weights could not be loaded."""


@dataclass
class Backbone:
    image_encoder: nn.Module
    preprocess_train: Callable
    preprocess_val: Callable
    feature_dim: int
    model_id: str
    clip_model: nn.Module | None = None
    tokenizer: Callable | None = None
    zeroshot_templates: Any = "openai"


def load_error(model_cfg: Mapping, reason: BaseException | str) -> BackboneLoadError:
    source = config_get(model_cfg, "source", "open_clip")
    name, pretrained = model_cfg["name"], config_get(model_cfg, "pretrained")
    return BackboneLoadError(
        f"Could not load {source} model '{name}' with pretrained='{pretrained}': {reason}\n"
        f"Offline? Download the checkpoint on a machine with network access and set "
        f"model.pretrained=/path/to/checkpoint (a local file for '{name}'); "
        f"model.cache_dir ({config_get(model_cfg, 'cache_dir', 'unset')}) is where tags are cached; "
        "HF_HUB_OFFLINE=1 makes offline attempts fail fast instead of retrying."
    )


def _check_local_file(model_cfg: Mapping, pretrained: str) -> None:
    if not Path(pretrained).is_file():
        raise load_error(model_cfg, f"local checkpoint file not found: {pretrained}")


def _feature_dim(encoder: nn.Module, image_size: int | tuple[int, int]) -> int:
    for attr in ("output_dim", "head_hidden_size", "num_features"):
        dim = getattr(encoder, attr, None)
        if isinstance(dim, int) and dim > 0:
            return dim
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    with torch.no_grad():
        return int(encoder(torch.zeros(1, 3, *size)).shape[-1])


class _OpenClipChatter(logging.Filter):
    """open_clip narrates every build on the root logger at INFO ("No potential checkpoint
    path found ...", "Loading full pretrained weights ..."), which reads like a failure in
    every stage; :func:`build_backbone` says in one line what was loaded instead. For
    skeletons, whose weights are loaded next, its 'initialized randomly' warning goes too."""

    def __init__(self, skeleton: bool) -> None:
        super().__init__()
        self.skeleton = skeleton

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING and f"{os.sep}open_clip{os.sep}" in record.pathname:
            return False
        return not (self.skeleton and "initialized randomly" in record.getMessage())


@contextlib.contextmanager
def _quiet_open_clip(skeleton: bool) -> Iterator[None]:
    root, quiet = logging.getLogger(), _OpenClipChatter(skeleton)
    root.addFilter(quiet)
    try:
        yield
    finally:
        root.removeFilter(quiet)


def _open_clip_backbone(model_cfg: Mapping, pretrained: bool) -> Backbone:
    """Any open_clip model by name, with a pretrained tag or a local checkpoint path.

    For skeletons (``pretrained=False``) the tag's preprocessing and QuickGELU setting are
    still applied, so the skeleton computes exactly the function the trained weights expect.
    """
    import open_clip

    import soup_exp.models  # noqa: F401  (registers the project's model configs)

    name = model_cfg["name"]
    value = config_get(model_cfg, "pretrained")
    value = None if value in (False, True) else value
    is_path = value is not None and looks_like_path(str(value))
    tag_cfg = {} if (value is None or is_path) else open_clip.get_pretrained_cfg(name, str(value))
    if open_clip.get_model_config(name) is None:
        raise load_error(model_cfg, f"unknown open_clip architecture (known: {', '.join(open_clip.list_models())})")
    if pretrained and value is not None and not is_path and not tag_cfg:
        tags = open_clip.list_pretrained_tags_by_model(name)
        raise load_error(model_cfg, f"unknown pretrained tag (open_clip knows: {tags or 'none'})")
    if pretrained and is_path:
        _check_local_file(model_cfg, str(value))

    quick_gelu = config_get(model_cfg, "quick_gelu", tag_cfg.get("quick_gelu", False))
    kwargs = dict(
        force_quick_gelu=bool(quick_gelu),
        image_mean=tag_cfg.get("mean"),
        image_std=tag_cfg.get("std"),
        image_interpolation=tag_cfg.get("interpolation"),
        image_resize_mode=tag_cfg.get("resize_mode"),
        cache_dir=config_get(model_cfg, "cache_dir"),
        **(to_plain(config_get(model_cfg, "kwargs")) or {}),
    )
    try:
        with _quiet_open_clip(skeleton=not pretrained):
            model, preprocess_train, preprocess_val = open_clip.create_model_and_transforms(
                name, pretrained=str(value) if (pretrained and value is not None) else None, **kwargs
            )
    except BackboneLoadError:
        raise
    except Exception as exc:  # network, hub, checksum, state-dict mismatch
        raise load_error(model_cfg, exc) from exc
    with _quiet_open_clip(skeleton=not pretrained):
        tokenizer = open_clip.get_tokenizer(name)
    if config_get(model_cfg, "grad_checkpointing", False):
        model.set_grad_checkpointing(True)
    visual = model.visual
    return Backbone(
        image_encoder=visual,
        preprocess_train=preprocess_train,
        preprocess_val=preprocess_val,
        feature_dim=_feature_dim(visual, getattr(visual, "image_size", 224)),
        model_id=model_id_for(model_cfg),
        clip_model=model,
        tokenizer=tokenizer,
        zeroshot_templates=config_get(model_cfg, "zeroshot_templates", "openai"),
    )


def _timm_backbone(model_cfg: Mapping, pretrained: bool) -> Backbone:
    """Any timm image model, features only (``num_classes=0``).

    ``pretrained`` is a tag (``openai`` -> ``<name>.openai``), a local file (loaded through
    timm's own ``pretrained_cfg_overlay=dict(file=...)``), ``true`` (tag in the name or
    timm's default) or null (random init).
    """
    import timm
    from timm.data import create_transform, resolve_data_config

    name = model_cfg["name"]
    value = config_get(model_cfg, "pretrained")
    kwargs: dict[str, Any] = dict(num_classes=0, **(to_plain(config_get(model_cfg, "kwargs")) or {}))
    full_name, load = name, False
    if value is True:
        load = True
    elif value not in (None, False):
        if looks_like_path(str(value)):
            load = True
            if pretrained:
                _check_local_file(model_cfg, str(value))
                kwargs["pretrained_cfg_overlay"] = dict(file=str(value))
        else:
            full_name, load = f"{name}.{value}", True
            if not timm.list_pretrained(full_name):
                raise load_error(model_cfg, f"timm has no pretrained tag '{full_name}'")
    if config_get(model_cfg, "cache_dir") and pretrained and load:
        kwargs["cache_dir"] = str(config_get(model_cfg, "cache_dir"))
    try:
        model = timm.create_model(full_name, pretrained=bool(pretrained and load), **kwargs)
    except Exception as exc:
        raise load_error(model_cfg, exc) from exc
    if config_get(model_cfg, "grad_checkpointing", False):
        model.set_grad_checkpointing(True)
    data_cfg = resolve_data_config(model=model)
    if "img_size" in kwargs:
        size = kwargs["img_size"]
        data_cfg["input_size"] = (3, *((size, size) if isinstance(size, int) else size))
    return Backbone(
        image_encoder=model,
        preprocess_train=create_transform(**data_cfg, is_training=True),
        preprocess_val=create_transform(**data_cfg, is_training=False),
        feature_dim=_feature_dim(model, data_cfg["input_size"][1:]),
        model_id=model_id_for(model_cfg),
    )


BACKBONE_SOURCES: dict[str, Callable[[Mapping, bool], Backbone]] = {
    "open_clip": _open_clip_backbone,
    "timm": _timm_backbone,
}


def build_backbone(model_cfg: Mapping, pretrained: bool = True) -> Backbone:
    """Create the backbone described by a ``model/*.yaml`` config.

    ``source`` picks a built-in family (open_clip, timm); a config with ``_target_``
    instead names the user's own ``fn(model_cfg, pretrained) -> Backbone``.
    ``pretrained=False`` builds the same architecture and transforms without touching the
    network or the checkpoint (skeletons for loading ingredients and soups).
    """
    target = config_get(model_cfg, "_target_")
    if target:
        from hydra.utils import get_method

        builder = get_method(str(target))
    else:
        source = config_get(model_cfg, "source", "open_clip")
        if source not in BACKBONE_SOURCES:
            raise BackboneLoadError(f"model.source={source!r} is not one of {sorted(BACKBONE_SOURCES)} "
                                    "(or give model._target_: your own builder)")
        builder = BACKBONE_SOURCES[source]
    backbone = builder(model_cfg, pretrained)
    if not isinstance(backbone, Backbone):
        raise BackboneLoadError(f"{target} returned {type(backbone).__name__}, not a soup_exp.models.Backbone")
    if pretrained:
        log.info("built backbone %s with its pretrained weights", backbone.model_id)
    else:
        log.debug("built the architecture of %s (weights are loaded from an ingredient or soup)", backbone.model_id)
    return backbone
