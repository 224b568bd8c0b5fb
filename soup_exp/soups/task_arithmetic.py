"""Task arithmetic (Ilharco et al., ICLR 2023, "Editing models with task arithmetic"): the
base model plus ``scale`` times the sum of the task vectors ``w_i - base``.

One streaming pass holding a running sum: memory is two copies of one tensor, whatever N is.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

from soup_exp.soups.kernels import Tensors, kernel


def added_task_vectors(tasks: Iterable[Tensor], base: Tensor, scale: float) -> Tensor:
    """``base + scale * sum(tasks)``, summed as the task vectors stream in."""
    total = torch.zeros_like(base)
    for task in tasks:
        total.add_(task)
    return total.mul_(scale).add_(base)


@kernel
def task_arithmetic(tensors: Tensors, base: Tensor, *, scale: float) -> Tensor:
    """Recipe ``task_arithmetic``: the base plus ``scale`` times the sum of the task vectors."""
    return added_task_vectors((tensor - base for tensor in tensors), base, scale)
