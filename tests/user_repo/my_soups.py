"""A researcher's own recipes, living in their repository (see docs/extending.md)."""

from __future__ import annotations

from typing import Annotated

import torch
from torch import Tensor

from soup_exp.soups import Range, Soup, SoupContext, Tensors, kernel, uniform_soup


def top_k_soup(ctx: SoupContext, *, k: Annotated[int, Range(1)]) -> Soup:
    """The uniform soup of the ``k`` ingredients with the best held-out accuracy."""
    pool = ctx.pool
    ranked = sorted(range(len(pool.ingredients)), key=lambda i: -pool.scores[i])[:k]
    chosen = [pool.ingredients[i] for i in ranked]
    state_dict = uniform_soup(chosen, arithmetic=ctx.arithmetic, accumulate_dtype=ctx.accumulate_dtype)
    return Soup(state_dict, {"ingredients": chosen, "held_out_accuracy": ctx.judge.evaluate(state_dict)})


@kernel
def task_arithmetic(tensors: Tensors, base: Tensor, *, scale: float) -> Tensor:
    """The initialisation plus ``scale`` times the sum of the task vectors."""
    total = torch.zeros_like(base)
    for tensor in tensors:
        total += tensor - base
    return base + scale * total


@kernel
def ties(tensors: Tensors, base: Tensor, *, density: Annotated[float, Range(0.0, 1.0, low_open=True)],
         scale: float) -> Tensor:
    """TIES-merging (Yadav et al. 2023), one tensor at a time: keep the ``density`` share of
    each task vector's largest entries, elect a sign per entry, add ``scale`` times the mean
    of the entries that agree with it. Two passes over ``tensors``: memory does not grow with N."""
    elected = torch.zeros_like(base)
    for tensor in tensors:
        elected += trimmed(tensor - base, density)
    sign, total, count = elected.sign(), torch.zeros_like(base), torch.zeros_like(base)
    for tensor in tensors:
        task = trimmed(tensor - base, density)
        agree = (task.sign() == sign) & (task != 0)
        total += torch.where(agree, task, 0.0)
        count += agree
    return base + scale * total / count.clamp(min=1)


def trimmed(task: Tensor, density: float) -> Tensor:
    """``task`` with all but its ``density`` share of largest-magnitude entries zeroed."""
    keep = max(1, round(density * task.numel()))
    threshold = task.abs().flatten().kthvalue(task.numel() - keep + 1).values
    return torch.where(task.abs() >= threshold, task, 0.0)
