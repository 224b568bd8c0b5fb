"""What a recipe is, for built-in and user recipes alike.

A recipe is one callable plus one YAML file ``recipes/<name>.yaml`` whose ``_target_``
names it; every other key of that file (except ``label``) is a keyword parameter::

    def my_merge(ctx: SoupContext, *, alpha: Annotated[float, Range(0, 1)]) -> Soup: ...

It returns a state dict (a weight-space soup), a :class:`Soup` (weights and/or the
``soup.json`` fields it wants recorded), an iterable of named Soups (a recipe that cooks
several, like WiSE-FT's alphas), or None (nothing to cook, e.g. a missing zero-shot model).
Parameters are checked against the signature before any recipe runs
(:mod:`soup_exp.utils.plugins`, shared with analyses), so a typo or an out-of-range value
costs a second, not a learned soup.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import torch

from soup_exp.errors import ConfigError
from soup_exp.utils.checks import Range
from soup_exp.utils.plugins import Plugin, check_params, load_plugin

__all__ = ["Annotated", "Range", "Recipe", "Soup", "check_params", "load_recipe", "soups_of"]


@dataclass
class Soup:
    """One cooked soup: weights (None for output-space recipes) and ``soup.json`` fields.

    ``info`` may hold ``ingredients`` (names, default: the whole pool), ``coefficients``,
    ``members`` (an ensemble's ingredient names), ``held_out_accuracy``, ``history``,
    ``kind`` (default ``soup``), ``label`` and anything else worth keeping.
    """

    state_dict: Mapping[str, torch.Tensor] | None = None
    info: dict[str, Any] = field(default_factory=dict)
    name: str | None = None  # required when a recipe cooks several soups
    weights_from: Path | None = None  # reuse an existing weights file (hard link)


@dataclass(frozen=True)
class Recipe(Plugin):
    """A selected recipe: its config name, callable, parameters and table label."""

    def cook(self, ctx: Any) -> Any:
        return self(ctx)

    @classmethod
    def of(cls, plugin: Plugin) -> Recipe:
        return cls(plugin.name, plugin.fn, plugin.params, plugin.label, plugin.target)


def load_recipe(name: str, node: Mapping[str, Any]) -> Recipe:
    """Resolve ``recipes.<name>`` (a plain mapping) and check its parameters."""
    return Recipe.of(load_plugin("recipes", name, node))


def soups_of(recipe: str, result: Any) -> Iterator[Soup]:
    """Normalise what a recipe returned into named :class:`Soup` objects."""
    if result is None:
        return
    if isinstance(result, Soup):
        yield Soup(result.state_dict, dict(result.info), result.name or recipe, result.weights_from)
    elif isinstance(result, Mapping):
        yield Soup(result, {}, recipe)
    elif isinstance(result, Iterable):
        for soup in result:
            if not isinstance(soup, Soup) or not soup.name:
                raise ConfigError(f"recipe {recipe!r} returned several soups: each must be a Soup with a name")
            yield soup
    else:
        raise ConfigError(f"recipe {recipe!r} returned {type(result).__name__}; expected a state dict, "
                          "a Soup, several named Soups, or None")
