"""Model Stock (Jang et al., ECCV 2024): average, then pull back towards the pretrained
model by a per-tensor ratio set by the angle between the fine-tuned models.

For each tensor, with ``d_i = w_i - w_0`` and ``cos`` the mean pairwise cosine of the
``d_i``: ``t = N cos / (1 + (N - 1) cos)`` and ``w = t * mean(w_i) + (1 - t) * w_0``.
The mean pairwise cosine is ``(|sum_i d_i/|d_i||^2 - N) / (N (N - 1))``, so one streaming
pass suffices: memory is the pretrained model plus two fp32 sums, whatever N is.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from soup_exp.soups.context import SoupContext
from soup_exp.soups.ingredients import (
    IngredientLike,
    float_keys,
    load_ingredients,
    resolve_ingredients,
    validate_ingredients,
)
from soup_exp.soups.recipe import Soup
from soup_exp.soups.streaming import prefetched, stream_tensors

log = logging.getLogger(__name__)


@dataclass
class ModelStockResult:
    state_dict: dict[str, torch.Tensor]
    ratios: dict[str, float]  # t per tensor: weight of the fine-tuned average


def model_stock_soup(
    ingredients: IngredientLike | Iterable[IngredientLike],
    pretrained: IngredientLike,
    *,
    progress: bool = False,
) -> ModelStockResult:
    ings = load_ingredients(ingredients)
    base = resolve_ingredients(pretrained, kinds=None)
    if len(base) != 1:
        raise ValueError(f"Model Stock needs exactly one pretrained model, got {len(base)}")
    validate_ingredients([ings[0], base[0]])
    keys = float_keys(ings[0])
    w0 = {k: base[0].get(k).float() for k in keys}
    sums: dict[str, torch.Tensor] = {}
    directions: dict[str, torch.Tensor] = {}
    for _, key, tensor in prefetched(stream_tensors(ings, keys)):
        delta = tensor.float() - w0[key]
        norm = delta.norm()
        unit = delta.div_(norm) if norm > 0 else delta
        if key in sums:
            sums[key].add_(tensor)
            directions[key].add_(unit)
        else:
            sums[key] = tensor.to(torch.float32, copy=True)
            directions[key] = unit.clone()
    n = len(ings)
    out: dict[str, torch.Tensor] = {}
    ratios: dict[str, float] = {}
    for key in ings[0].tensor_keys():
        dtype = ings[0].spec(key)[0]
        if key not in sums:
            out[key] = ings[0].get(key)
            continue
        if n == 1:
            t = 1.0
        else:
            cos = (directions[key].pow(2).sum().item() - n) / (n * (n - 1))
            cos = min(max(cos, 0.0), 1.0)
            t = n * cos / (1 + (n - 1) * cos)
        ratios[key] = t
        merged = sums.pop(key).div_(n).mul_(t).add_(w0.pop(key), alpha=1 - t)
        directions.pop(key)
        out[key] = merged.to(dtype)
    return ModelStockResult(out, ratios)


def model_stock_recipe(ctx: SoupContext) -> Soup | None:
    """Recipe ``model_stock``: the pool's average pulled towards the zero-shot model."""
    if ctx.zeroshot is None:
        log.warning("Model Stock skipped: it needs the pretrained (zero-shot) model in %s", ctx.cfg.zeroshot_dir)
        return None
    result = model_stock_soup(ctx.ingredients, ctx.zeroshot, progress=ctx.progress)
    return Soup(result.state_dict, {"coefficients": result.ratios, "pretrained": ctx.zeroshot.name})
