"""Where evaluation batches of uint8 images come from: decoded JPEGs or a cache.

Every source yields ``(images, indices)``: a uint8 (B, 3, H, W) CPU tensor and the
dataset positions of its rows, in the order asked for. Normalisation happens later, on
the device, so every source feeds the model bit-identical inputs.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

import torch
from torch.utils.data import DataLoader, Dataset

from soup_exp.cluster.signals import quiet_loader_worker
from soup_exp.data.base import LabeledImages
from soup_exp.errors import SoupExpError

Batch = tuple[torch.Tensor, torch.Tensor]
T = TypeVar("T")
R = TypeVar("R")


class ImageShapeError(SoupExpError, ValueError):
    """Images of one dataset came out of the eval transform at different sizes."""


class DecodedImages(Dataset):
    """Reads and transforms one image per item: ``i -> (uint8 (3, H, W), i)``."""

    def __init__(self, dataset: LabeledImages, to_uint8: Callable[[object], torch.Tensor]):
        self.name = dataset.name
        self.paths = dataset.paths
        self.border_crop = dataset.border_crop
        self.to_uint8 = to_uint8

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        from soup_exp.data.images import load_image

        image = self.to_uint8(load_image(self.paths[index], border_crop=self.border_crop))
        if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] != 3:
            raise ImageShapeError(
                f"{self.name}: {self.paths[index]} became a {tuple(image.shape)} {image.dtype} "
                "tensor; the eval transform must give uint8 (3, H, W) (convert images to RGB)"
            )
        return image, index


class _StackChecked:
    """Collate that names the offending file when sizes differ (no CenterCrop?)."""

    def __init__(self, name: str, paths: Sequence[str]):
        self.name, self.paths = name, paths

    def __call__(self, items: list[tuple[torch.Tensor, int]]) -> Batch:
        first = items[0][0].shape
        for image, index in items:
            if image.shape != first:
                raise ImageShapeError(
                    f"{self.name}: {self.paths[index]} is {tuple(image.shape)} after the eval "
                    f"transform but {self.paths[items[0][1]]} is {tuple(first)}; the eval transform "
                    "must end in a fixed-size crop (CenterCrop) to batch or cache images"
                )
        return torch.stack([i for i, _ in items]), torch.tensor([j for _, j in items])


class DecodingSource:
    """Decode JPEGs on every pass, in ``num_workers`` DataLoader workers."""

    def __init__(
        self,
        dataset: LabeledImages,
        to_uint8: Callable[[object], torch.Tensor],
        *,
        num_workers: int = 0,
        pin_memory: bool = False,
    ):
        self.dataset = DecodedImages(dataset, to_uint8)
        self.num_workers = num_workers
        self.pin_memory = pin_memory

    def __len__(self) -> int:
        return len(self.dataset)

    def iter_batches(self, batch_size: int, order: Sequence[int] | None = None) -> Iterator[Batch]:
        loader = DataLoader(
            self.dataset,
            batch_size=batch_size,
            sampler=list(order) if order is not None else None,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            collate_fn=_StackChecked(self.dataset.name, self.dataset.paths),
            persistent_workers=False,
            prefetch_factor=4 if self.num_workers > 0 else None,
            worker_init_fn=quiet_loader_worker,
        )
        yield from loader


def ordered_map(fn: Callable[[T], R], items: Iterable[T], workers: int = 4, ahead: int = 8) -> Iterator[R]:
    """``map(fn, items)`` run by ``workers`` threads up to ``ahead`` items in advance,
    results in order.

    Cache reads are memory copies that release the GIL, so several readers keep up with
    a fast GPU and overlap the model's forward pass instead of adding to it.
    """
    pending: collections.deque[Future] = collections.deque()
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="soup-exp-read") as pool:
        try:
            for item in items:
                pending.append(pool.submit(fn, item))
                if len(pending) >= ahead:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()
