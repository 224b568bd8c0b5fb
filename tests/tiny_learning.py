"""A tiny classifier, blob data and per-epoch batches, for the learned-soup tests."""

from __future__ import annotations

import torch
from torch import nn


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.image_encoder = nn.Sequential(nn.Linear(8, 16), nn.Tanh())
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        return self.head(self.image_encoder(x))


def blobs(seed=0, n=96):
    """Three Gaussian blobs in 8 dimensions: ``(x, y)``."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(3, 8, generator=g) * 2
    y = torch.randint(0, 3, (n,), generator=g)
    return centers[y] + torch.randn(n, 8, generator=g), y


def epoch_batches(x, y, bs=32):
    """``epoch -> batches``, shuffled by the epoch alone (as the judge's held-out batches)."""
    def per_epoch(epoch):
        g = torch.Generator().manual_seed(epoch)
        perm = torch.randperm(len(y), generator=g)
        return [(x[perm[i:i + bs]], y[perm[i:i + bs]]) for i in range(0, len(y), bs)]
    return per_epoch
