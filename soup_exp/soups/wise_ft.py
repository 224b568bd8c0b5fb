"""WiSE-FT (Wortsman et al. 2022b): interpolate a fine-tuned model or soup with the
zero-shot model, ``(1 - alpha) * zeroshot + alpha * model``, over a grid of alphas."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Annotated

import torch

from soup_exp.soups.context import SoupContext
from soup_exp.soups.ingredients import WeightsLike, load_ingredients
from soup_exp.soups.kernels import Tensors, merge_tensors
from soup_exp.soups.recipe import Range, Soup

log = logging.getLogger(__name__)

PAPER_ALPHAS = tuple(round(a / 10, 1) for a in range(11))


def wise_ft_soups(
    model: WeightsLike,
    zeroshot: WeightsLike,
    alphas: Sequence[float] = PAPER_ALPHAS,
    *,
    accumulate_dtype: torch.dtype = torch.float32,
) -> Iterator[tuple[float, dict[str, torch.Tensor]]]:
    """Yield ``(alpha, state_dict)``; one interpolation in memory at a time.

    alpha 0 is the zero-shot model and 1 the fine-tuned one; both must share keys, shapes
    and base model (the zero-shot head is the fine-tuning head's initialisation)."""
    start, tuned = load_ingredients([zeroshot, model], kinds=None)
    for alpha in alphas:
        alpha = float(alpha)
        yield alpha, merge_tensors([tuned], interpolate, base=start, params={"alpha": alpha},
                                   accumulate_dtype=accumulate_dtype, name="wise_ft")


def interpolate(tensors: Tensors, base: torch.Tensor, *, alpha: float) -> torch.Tensor:
    """``(1 - alpha) * base + alpha * model``: the kernel of WiSE-FT."""
    (model,) = tensors
    return (base * (1.0 - alpha)).add_(model, alpha=alpha)


def wise_ft_name(of: str, alpha: float) -> str:
    return f"wise_ft_{of}_a{alpha:.2f}"


def wise_ft_recipe(
    ctx: SoupContext, *, of: list[str], alphas: list[Annotated[float, Range(0.0, 1.0)]]
) -> Iterator[Soup]:
    """Recipe ``wise_ft``: each model in ``of`` (a soup cooked before, an ingredient, or
    ``best_individual``) interpolated with the zero-shot model at every alpha."""
    zeroshot = ctx.pool.zeroshot
    if zeroshot is None:
        log.warning("WiSE-FT skipped: no zero-shot model in %s (run `soup-exp finetune sweep=zeroshot`)",
                    ctx.pool.zeroshot_dir)
        return
    for name in of:
        todo = [a for a in alphas if not ctx.store.finished(wise_ft_name(name, a))]
        if not todo:
            continue
        model = ctx.pool.model(name)
        for alpha, state_dict in wise_ft_soups(model, zeroshot, todo, accumulate_dtype=ctx.accumulate_dtype):
            yield Soup(state_dict, name=wise_ft_name(name, alpha), kind="wise_ft", ingredients=[zeroshot, model],
                       coefficients=[1.0 - alpha, alpha], alpha=alpha, interpolated=name)
