"""Shared fixtures: generated coloured-shape data and one briefly pretrained tiny CLIP."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from models_testdata import CLASSES, tiny_clip_cfg, write_captions, write_images  # noqa: E402


@pytest.fixture(scope="session")
def shapes_data(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("shapes")
    return {
        "captions": write_captions(root / "pretrain", per_class=12, seed=0),
        "train": write_images(root / "train", per_class=16, seed=5),
        "test": write_images(root / "test", per_class=16, seed=99),
        "classnames": list(CLASSES),
        "root": root,
    }


@pytest.fixture(scope="session")
def pretrained_tiny_clip(shapes_data, tmp_path_factory) -> dict:
    """A tiny CLIP pretrained for 2 short epochs: zero-shot above chance, far from perfect."""
    from soup_exp.demo.pretrain import ensure_pretrained

    torch.set_num_threads(1)
    cfg = tiny_clip_cfg(str(tmp_path_factory.mktemp("pretrained") / "tiny.safetensors"))
    ensure_pretrained(cfg, shapes_data["captions"], progress=False)
    return cfg
