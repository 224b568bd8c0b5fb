"""WiSE-FT (Wortsman et al. 2022b): interpolate a fine-tuned model or soup with the
zero-shot model, ``(1 - alpha) * zeroshot + alpha * model``, over a grid of alphas."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from soup_exp.soups.ingredients import IngredientLike, load_ingredients
from soup_exp.soups.streaming import finalize, weighted_sum

PAPER_ALPHAS = tuple(round(a / 10, 1) for a in range(11))


def wise_ft(
    model: IngredientLike,
    zeroshot: IngredientLike,
    alphas: Sequence[float] = PAPER_ALPHAS,
    *,
    accumulate_dtype: torch.dtype = torch.float32,
) -> Iterator[tuple[float, dict[str, torch.Tensor]]]:
    """Yield ``(alpha, state_dict)``; one interpolation in memory at a time.

    alpha 0 is the zero-shot model and 1 the fine-tuned one; both must share keys, shapes
    and base model (the zero-shot head is the fine-tuning head's initialisation)."""
    pair = load_ingredients([zeroshot, model], kinds=None)
    for alpha in alphas:
        alpha = float(alpha)
        acc = weighted_sum(pair, [1.0 - alpha, alpha], accumulate_dtype=accumulate_dtype,
                           desc=f"WiSE-FT alpha={alpha:g}")
        yield alpha, finalize(acc, 1.0, pair[0])
