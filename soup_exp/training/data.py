"""The training set and its order.

Every random choice of the input pipeline is a function of (seed, epoch, sample index):
the sampler shuffles with ``seed + epoch`` and tags each index with a per-sample seed,
and the dataset seeds the augmentation RNGs from that tag. So the images a step sees do
not depend on the number of ranks or loader workers, and a resumed run replays exactly
the batches an uninterrupted one would have seen.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler


def sample_seed(seed: int, epoch: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


class TrainImages(Dataset):
    """``(path, label)`` samples read with the project's one image reader."""

    def __init__(self, samples: Sequence[tuple[str, int]], transform: Callable,
                 reader: Callable | None = None):
        if reader is None:
            from soup_exp.data.images import load_image as reader
        self.samples = list(samples)
        self.transform = transform
        self.reader = reader

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, item: tuple[int, int] | int) -> tuple[torch.Tensor, int]:
        index, seed = item if isinstance(item, tuple) else (item, None)
        path, label = self.samples[index]
        image = self.reader(path)
        if seed is None:
            return self.transform(image), label
        with seeded_rngs(seed):
            return self.transform(image), label


class seeded_rngs:  # noqa: N801 - used like a function
    """Seed python, numpy and torch (CPU) RNGs for one sample; restore them afterwards.

    Only torch's CPU generator: ``torch.manual_seed`` would also queue a lazy CUDA seeding
    that records a stack trace, milliseconds per sample where CUDA is not initialised."""

    def __init__(self, seed: int):
        self.seed = seed

    def __enter__(self) -> None:
        self.saved = (random.getstate(), np.random.get_state(), torch.get_rng_state())
        random.seed(self.seed)
        np.random.seed(self.seed % 2**32)
        torch.default_generator.manual_seed(self.seed)

    def __exit__(self, *exc) -> None:
        py, npy, th = self.saved
        random.setstate(py)
        np.random.set_state(npy)
        torch.set_rng_state(th)


class SeededDistributedSampler(DistributedSampler):
    """DistributedSampler that yields ``(index, sample seed)`` and can start mid-epoch.

    ``drop_last=True`` so every rank gets the same number of samples and every step the
    full global batch; ``skip`` drops this rank's first samples when resuming.
    """

    def __init__(self, dataset: Dataset, *, num_replicas: int, rank: int, seed: int):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True,
                         seed=seed, drop_last=True)
        self.skip = 0

    def set_position(self, epoch: int, skip: int) -> None:
        self.set_epoch(epoch)
        self.skip = skip

    def __iter__(self) -> Iterator[tuple[int, int]]:
        indices = list(super().__iter__())[self.skip:]
        return iter([(i, sample_seed(self.seed, self.epoch, i)) for i in indices])

    def __len__(self) -> int:
        return self.num_samples - self.skip
