"""TIES-Merging (Yadav et al., NeurIPS 2023): trim each task vector to its top-k % entries
by magnitude, elect a sign per entry (the sign of the sum of the trimmed vectors), average
the entries that agree with it (the disjoint mean; zero where none does), and add ``scale``
times that to the base.

The paper trims each task vector globally (top k % of all its parameters); here the top k %
is taken per tensor, so the kernel never holds more than one tensor of a model. It makes two
passes over ``tensors`` (elect, then average) instead of stacking them: memory is a few
copies of one tensor, whatever N is.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Annotated

import torch
from torch import Tensor

from soup_exp.soups.kernels import Tensors, kernel
from soup_exp.soups.recipe import Range


def trimmed(task: Tensor, k: float) -> Tensor:
    """``task`` with all but its top ``k`` % entries by magnitude set to zero (ties at the
    threshold are kept)."""
    keep = max(1, round(k / 100 * task.numel()))
    threshold = task.abs().flatten().kthvalue(task.numel() - keep + 1).values
    return torch.where(task.abs() >= threshold, task, 0.0)


def sign_elected_mean(passes: Callable[[], Iterable[Tensor]], base: Tensor, scale: float) -> Tensor:
    """``base + scale * disjoint_mean``: ``passes()`` streams the (sparsified) task vectors
    again on each call; the first pass elects the signs, the second averages the agreeing entries."""
    elected = torch.zeros_like(base)
    for task in passes():
        elected.add_(task)
    sign, total, count = elected.sign(), torch.zeros_like(base), torch.zeros_like(base)
    for task in passes():
        agree = (task.sign() == sign) & (task != 0)
        total.add_(torch.where(agree, task, 0.0))
        count.add_(agree)
    return total.div_(count.clamp_(min=1)).mul_(scale).add_(base)


@kernel
def ties(tensors: Tensors, base: Tensor, *, k: Annotated[float, Range(0.0, 100.0, low_open=True)],
         scale: float) -> Tensor:
    """Recipe ``ties``: trim to the top ``k`` %, elect signs, disjoint mean, ``base + scale * merged``."""
    return sign_elected_mean(lambda: (trimmed(tensor - base, k) for tensor in tensors), base, scale)
