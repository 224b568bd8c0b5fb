"""A miniature ImageNet train tree and the overrides of a tiny fine-tune (seconds on a CPU),
shared by the training and cluster tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

WNIDS = ("n01440764", "n01443537", "n01484850", "n01491361")  # ImageNet classes 0..3


def write_tiny_imagenet(root: Path, per_class: int = 12, size: int = 32, seed: int = 0) -> Path:
    """``imagenet/train/<wnid>/*.JPEG`` with a class-dependent colour, so classes are learnable."""
    rng = np.random.default_rng(seed)
    for c, wnid in enumerate(WNIDS):
        folder = root / "imagenet" / "train" / wnid
        folder.mkdir(parents=True, exist_ok=True)
        base = np.array([(c * 70) % 256, (255 - c * 60) % 256, (c * 120 + 40) % 256])
        for i in range(per_class):
            pixels = np.clip(base + rng.normal(0, 40, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{wnid}_{i}.JPEG", quality=90)
    return root


def tiny_overrides(root: Path, *extra: str) -> list[str]:
    return [
        f"paths.root_dir={root}",
        f"paths.data_dir={root / 'data'}",
        "model=tiny_clip",
        "model.pretrained=null",
        "logger=disabled",
        f"data.classes=[{','.join(WNIDS)}]",
        "data.heldout.per_class=2",
        "eval.cache.enabled=false",
        "eval.batch_size=16",
        "device=cpu",
        "num_workers=0",
        "progress=false",
        "name=t",
        "train.batch_size=8",
        "train.epochs=1",
        "train.warmup_steps=2",
        "train.lr=1e-3",
        "train.lp.epochs=3",
        "train.lp.batch_size=16",
        *extra,
    ]
