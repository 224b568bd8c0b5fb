"""Model Stock (Jang et al., ECCV 2024): average, then pull back towards the pretrained
model by a per-tensor ratio set by the angle between the fine-tuned models.

For each tensor, with ``d_i = w_i - w_0`` and ``cos`` the mean pairwise cosine of the
``d_i``: ``t = N cos / (1 + (N - 1) cos)`` and ``w = t * mean(w_i) + (1 - t) * w_0``.
The mean pairwise cosine is ``(|sum_i d_i/|d_i||^2 - N) / (N (N - 1))``, so one streaming
pass suffices: a kernel on the engine (:mod:`.kernels`) whose memory is a few fp32 copies of
one tensor, whatever N is.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from soup_exp.soups.context import SoupContext
from soup_exp.soups.ingredients import WeightsLike, load_ingredients, resolve_ingredients
from soup_exp.soups.kernels import Tensors, merge_tensors
from soup_exp.soups.recipe import Soup

log = logging.getLogger(__name__)


@dataclass
class ModelStockResult:
    state_dict: dict[str, torch.Tensor]
    ratios: dict[str, float]  # t per tensor: weight of the fine-tuned average


def model_stock_soup(
    ingredients: WeightsLike | Iterable[WeightsLike],
    pretrained: WeightsLike,
    *,
    progress: bool = False,
) -> ModelStockResult:
    ings = load_ingredients(ingredients)
    base = resolve_ingredients(pretrained, kinds=None)
    if len(base) != 1:
        raise ValueError(f"Model Stock needs exactly one pretrained model, got {len(base)}")
    ratios: dict[str, float] = {}
    state_dict = merge_tensors(ings, model_stock_kernel, base=base[0], params={"ratios": ratios},
                               accumulate_dtype=torch.float32, progress=progress, name="model_stock")
    return ModelStockResult(state_dict, ratios)


def model_stock_kernel(tensors: Tensors, base: torch.Tensor, *, ratios: dict[str, float]) -> torch.Tensor:
    """One tensor's Model Stock from one pass over the fine-tunes; its ratio goes to ``ratios``."""
    total = directions = None
    for tensor in tensors:
        delta = tensor - base
        norm = delta.norm()
        unit = delta.div_(norm) if norm > 0 else delta
        if total is None:
            total, directions = tensor.clone(), unit
        else:
            total.add_(tensor)
            directions.add_(unit)
    n = len(tensors)
    if n == 1:
        t = 1.0
    else:
        cos = (directions.pow(2).sum().item() - n) / (n * (n - 1))
        cos = min(max(cos, 0.0), 1.0)
        t = n * cos / (1 + (n - 1) * cos)
    ratios[tensors.key] = t
    return total.div_(n).mul_(t).add_(base, alpha=1 - t)


def model_stock_recipe(ctx: SoupContext) -> Soup | None:
    """Recipe ``model_stock``: the pool's average pulled towards the zero-shot model."""
    zeroshot = ctx.pool.zeroshot
    if zeroshot is None:
        log.warning("Model Stock skipped: it needs the pretrained (zero-shot) model in %s", ctx.pool.zeroshot_dir)
        return None
    result = model_stock_soup(ctx.pool.ingredients, zeroshot, progress=ctx.progress)
    return Soup(result.state_dict, {"pretrained": zeroshot.name}, coefficients=result.ratios)
