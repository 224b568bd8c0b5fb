"""Tiny generated image-caption data for the model tests: one coloured shape per class."""

from __future__ import annotations

import random
from pathlib import Path

import torch
from open_clip import SIMPLE_IMAGENET_TEMPLATES
from PIL import Image, ImageDraw

CLASSES = {  # class name -> (colour, shape)
    "goldfish": ((230, 120, 20), "circle"),
    "tree frog": ((40, 190, 60), "square"),
    "school bus": ((240, 220, 30), "triangle"),
    "fire engine": ((220, 30, 30), "square"),
    "jellyfish": ((180, 80, 220), "circle"),
    "snowmobile": ((40, 80, 230), "triangle"),
}


def draw_shape(name: str, rng: random.Random, size: int = 48) -> Image.Image:
    colour, shape = CLASSES[name]
    background = tuple(rng.randint(0, 90) for _ in range(3))
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    r = rng.randint(size // 4, size // 2 - 2)
    cx, cy = rng.randint(r, size - r), rng.randint(r, size - r)
    jitter = tuple(max(0, min(255, c + rng.randint(-25, 25))) for c in colour)
    box = (cx - r, cy - r, cx + r, cy + r)
    if shape == "circle":
        draw.ellipse(box, fill=jitter)
    elif shape == "square":
        draw.rectangle(box, fill=jitter)
    else:
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=jitter)
    return image


def write_images(root: Path, per_class: int, seed: int) -> list[tuple[str, int]]:
    """``root/<class index>/<i>.jpg``; returns (path, label) samples."""
    rng = random.Random(seed)
    samples = []
    for label, name in enumerate(CLASSES):
        folder = root / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            path = folder / f"{i}.jpg"
            draw_shape(name, rng).save(path, quality=90)
            samples.append((str(path), label))
    return samples


def write_captions(root: Path, per_class: int, seed: int = 0) -> Path:
    """An open_clip caption CSV (tab-separated filepath, title) with relative paths."""
    rng = random.Random(seed + 1)
    samples = write_images(root / "images", per_class, seed)
    names = list(CLASSES)
    lines = ["filepath\ttitle"]
    for path, label in samples:
        caption = rng.choice(SIMPLE_IMAGENET_TEMPLATES)(names[label])
        lines.append(f"{Path(path).relative_to(root)}\t{caption}")
    csv_path = root / "captions.csv"
    csv_path.write_text("\n".join(lines) + "\n")
    return csv_path


def tiny_clip_cfg(pretrained: str | None, **pretrain) -> dict:
    settings = dict(epochs=2, batch_size=24, lr=2e-3, weight_decay=0.1, warmup_steps=5, seed=0)
    settings.update(pretrain)
    return dict(
        source="open_clip", name="soup-tiny-vit", pretrained=pretrained, cache_dir=None,
        grad_checkpointing=False, zeroshot_templates="simple", pretrain=settings,
    )


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return (logits.argmax(dim=1) == labels).float().mean().item()
