"""Uniform soup: the (optionally weighted) mean of the ingredients' weights."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from soup_exp.soups.context import SoupContext
from soup_exp.soups.ingredients import IngredientError, WeightsLike, float_keys, load_ingredients
from soup_exp.soups.recipe import Soup
from soup_exp.soups.streaming import arithmetic_dtype, check_arithmetic, finalize, weighted_sum


def uniform_soup(
    ingredients: WeightsLike | Iterable[WeightsLike],
    weights: Sequence[float] | None = None,
    *,
    accumulate_dtype: torch.dtype = torch.float32,
    prefetch: bool = True,
    progress: bool = False,
    arithmetic: str = "authors",
) -> dict[str, torch.Tensor]:
    """Mean of the ingredients (weighted by ``weights``, normalised to sum 1).

    Streams one tensor at a time: memory is one fp32 model plus a few tensors in flight.
    The result has the ingredients' dtypes. ``arithmetic`` defaults to the CLI's
    ``soup.arithmetic`` (``authors``), so both cook the same soup. ``"sum"`` accumulates in
    ``accumulate_dtype`` and divides once; ``"authors"`` adds ``x_i * (w_i / sum w)`` in
    order, in the ingredients' dtype (at least fp32), as the authors' ``main.py`` did:
    ``soup = v * (1./N) + soup`` -- bit for bit the same soup.
    """
    ings = load_ingredients(ingredients)
    weights = [1.0] * len(ings) if weights is None else [float(w) for w in weights]
    if len(weights) != len(ings):
        raise IngredientError(f"{len(weights)} weights given for {len(ings)} ingredients")
    total = sum(weights)
    if total == 0 or not all(map(_finite, weights)):
        raise IngredientError(f"soup weights must be finite with a non-zero sum, got {weights}")
    if check_arithmetic(arithmetic) == "authors":
        dtype = arithmetic_dtype(ings[0].spec(float_keys(ings[0])[0])[0])
        acc = weighted_sum(ings, [w / total for w in weights], accumulate_dtype=dtype, prefetch=prefetch,
                           progress=progress, desc="uniform soup", round_products=True)
        return finalize(acc, 1.0, ings[0])
    acc = weighted_sum(ings, weights, accumulate_dtype=accumulate_dtype, prefetch=prefetch,
                       progress=progress, desc="uniform soup")
    return finalize(acc, 1.0 / total, ings[0])


def _finite(x: float) -> bool:
    return x == x and abs(x) != float("inf")


def uniform_recipe(ctx: SoupContext) -> Soup:
    """Recipe ``uniform``: the plain average of the whole pool."""
    n = len(ctx.pool.ingredients)
    state_dict = uniform_soup(ctx.pool.ingredients, accumulate_dtype=ctx.accumulate_dtype, progress=ctx.progress,
                              arithmetic=ctx.arithmetic)
    return Soup(state_dict, coefficients=[1.0 / n] * n)
