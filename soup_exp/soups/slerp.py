"""SLERP: spherical linear interpolation of two models, tensor by tensor (as mergekit does).

Each tensor pair is flattened; with ``theta`` the angle between them,
``w = sin((1 - t) theta) / sin(theta) * a + sin(t theta) / sin(theta) * b``. Nearly colinear
tensors (``|cos theta| > COLINEAR``, mergekit's threshold) are interpolated linearly. Two
tensors at a time: memory does not depend on the pool.
"""

from __future__ import annotations

import math
from typing import Annotated

import torch
from torch import Tensor

from soup_exp.errors import ConfigError
from soup_exp.soups.context import SoupContext
from soup_exp.soups.kernels import Tensors, merge_tensors
from soup_exp.soups.recipe import Range, Soup

COLINEAR = 0.9995
EPS = 1e-8


def slerp_tensors(a: Tensor, b: Tensor, t: float) -> Tensor:
    """The spherical interpolation of ``a`` (t=0) and ``b`` (t=1); linear when nearly colinear."""
    cos = torch.dot((a / a.norm().clamp(min=EPS)).flatten(), (b / b.norm().clamp(min=EPS)).flatten()).item()
    if abs(cos) > COLINEAR:
        return (a * (1.0 - t)).add_(b, alpha=t)
    theta = math.acos(cos)
    return (a * (math.sin((1.0 - t) * theta) / math.sin(theta))).add_(b, alpha=math.sin(t * theta) / math.sin(theta))


def slerp_kernel(tensors: Tensors, base: Tensor | None, *, t: float) -> Tensor:
    a, b = tensors
    return slerp_tensors(a, b, t)


def slerp_recipe(ctx: SoupContext, *, models: list[str] | None, t: Annotated[float, Range(0.0, 1.0)]) -> Soup:
    """Recipe ``slerp``: ``models`` (two soups cooked earlier, ingredients or ``best_individual``;
    null: the two ingredients with the best held-out accuracy) interpolated at ``t``."""
    pool = ctx.pool
    if models is None:
        if len(pool.ingredients) < 2:
            raise ConfigError(f"recipes.{ctx.recipe}.models=null needs two ingredients; the pool has "
                              f"{len(pool.ingredients)}")
        ranked = sorted(range(len(pool.ingredients)), key=lambda i: -pool.scores[i])[:2]
        chosen = [pool.ingredients[i] for i in ranked]
    elif len(models) != 2:
        raise ConfigError(f"recipes.{ctx.recipe}.models: SLERP interpolates exactly two models, got "
                          f"{len(models)} ({', '.join(models)})")
    else:
        chosen = [pool.model(name) for name in models]
    state_dict = merge_tensors(chosen, slerp_kernel, params={"t": t}, accumulate_dtype=ctx.accumulate_dtype,
                               device=ctx.kernel_device, progress=ctx.progress, name=ctx.recipe)
    return Soup(state_dict, ingredients=chosen, coefficients=[1.0 - t, t], info={"t": t})
