"""A researcher's own recipe, living in their repository (see docs/extending.md)."""

from __future__ import annotations

from typing import Annotated

from soup_exp.soups import Range, Soup, SoupContext, uniform_soup


def top_k_soup(ctx: SoupContext, *, k: Annotated[int, Range(1)]) -> Soup:
    """The uniform soup of the ``k`` ingredients with the best held-out accuracy."""
    ranked = sorted(range(len(ctx.ingredients)), key=lambda i: -ctx.scores[i])[:k]
    chosen = [ctx.ingredients[i] for i in ranked]
    state_dict = uniform_soup(chosen, arithmetic=ctx.arithmetic, accumulate_dtype=ctx.accumulate_dtype)
    return Soup(state_dict, {"ingredients": chosen, "held_out_accuracy": ctx.evaluate(state_dict)})
