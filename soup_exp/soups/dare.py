"""DARE (Yu et al., ICML 2024, "Language models are Super Mario"): drop each entry of each
task vector with probability ``p``, rescale the survivors by ``1 / (1 - p)`` (so every
entry keeps its expectation), then merge the sparse task vectors by task arithmetic or, with
``merge: ties``, by TIES' sign election and disjoint mean (DARE replacing TIES' trim).

The drop mask of a tensor is drawn from a generator seeded by ``(seed, ingredient index in
pool order, tensor name)`` alone: a rerun, a resumed stage or a second pass over the tensors
draws the same mask whatever order tensors are read in. Reordering the pool changes which
mask each ingredient gets (the index is its position), so the soup then differs.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Literal

import torch
from torch import Tensor

from soup_exp.soups.kernels import Tensors, kernel
from soup_exp.soups.recipe import Range
from soup_exp.soups.task_arithmetic import added_task_vectors
from soup_exp.soups.ties import sign_elected_mean
from soup_exp.utils.hashing import stable_hash


def drop_generator(seed: int, index: int, key: str) -> torch.Generator:
    """The generator of one ingredient's mask of one tensor: a function of its arguments only."""
    return torch.Generator().manual_seed(int(stable_hash(["dare", seed, index, key]), 16))


def dropped(task: Tensor, p: float, generator: torch.Generator) -> Tensor:
    """``task`` with each entry dropped with probability ``p``, the survivors scaled by ``1 / (1 - p)``."""
    keep = torch.rand(task.shape, generator=generator) >= p
    return torch.where(keep.to(task.device), task / (1.0 - p), 0.0)


@kernel
def dare(tensors: Tensors, base: Tensor, *, p: Annotated[float, Range(0.0, 1.0, high_open=True)],
         merge: Literal["task_arithmetic", "ties"], scale: float, seed: int) -> Tensor:
    """Recipe ``dare``: drop and rescale each task vector, then merge them as ``merge`` says."""
    def sparse() -> Iterator[Tensor]:
        for index, tensor in enumerate(tensors):
            yield dropped(tensor - base, p, drop_generator(seed, index, tensors.key))

    if merge == "ties":
        return sign_elected_mean(sparse, base, scale)
    return added_task_vectors(sparse(), base, scale)
