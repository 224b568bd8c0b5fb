"""Miniature evaluation sets whose images encode an id a test model can read back.

Each image is flat with channel 0 = ``20 * id + 10``, so after resize/crop/normalise a
:class:`LookupModel` recovers ``id`` and returns row ``id`` of a logit table chosen by
the test: every accuracy can then be computed by hand.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torchvision import transforms as T

from soup_exp.data.base import LabeledImages, LogitProjection

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)
NUM_IDS = 10


def encode(image_id: int) -> int:
    return 20 * image_id + 10


def write_image(path: Path, image_id: int, size=(24, 20), border: int = 0) -> str:
    """A flat image encoding ``image_id``; ``border`` pixels of a misleading colour."""
    w, h = size
    pixels = np.full((h, w, 3), 100, dtype=np.uint8)
    pixels[..., 0] = encode(image_id)
    if border:
        pixels[:border, :, 0] = pixels[-border:, :, 0] = 250
        pixels[:, :border, 0] = pixels[:, -border:, 0] = 250
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return str(path)


class LookupModel(nn.Module):
    """Reads the encoded id from the normalised pixels and returns ``table[id]``."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = nn.Parameter(torch.as_tensor(table, dtype=torch.float32).clone())

    def read_ids(self, images: torch.Tensor) -> torch.Tensor:
        value = (images[:, 0].mean(dim=(1, 2)) * STD[0] + MEAN[0]) * 255
        return ((value - 10) / 20).round().long().clamp(0, self.table.shape[0] - 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.table[self.read_ids(images)]


def eval_transform(size: int = 16) -> T.Compose:
    return T.Compose([
        T.Resize(size, interpolation=T.InterpolationMode.BICUBIC),
        T.CenterCrop(size),
        T.ToTensor(),
        T.Normalize(MEAN, STD),
    ])


def make_dataset(root: Path, name: str, ids_and_targets, num_targets: int,
                 projection: LogitProjection | None = None, border_crop: int = 0) -> LabeledImages:
    samples = [
        (write_image(root / name / f"{i:03d}.png", image_id, border=border_crop), target)
        for i, (image_id, target) in enumerate(ids_and_targets)
    ]
    return LabeledImages(name, samples, num_targets, projection, border_crop, root=str(root / name))


def hand_accuracy(table: np.ndarray, dataset_spec, groups=None) -> float:
    """Accuracy computed without torch: project each row by max over groups, argmax."""
    correct = 0
    for image_id, target in dataset_spec:
        row = table[image_id]
        scores = row if groups is None else [max(row[c] for c in g) for g in groups]
        correct += int(int(np.argmax(scores)) == target)
    return correct / len(dataset_spec)
