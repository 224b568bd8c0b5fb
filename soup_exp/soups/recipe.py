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

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
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

    The fields with a meaning (read back as :class:`~soup_exp.artifacts.SoupRecord`) are
    typed: ``ingredients`` (names or ingredients, default: the whole pool), ``kind``
    (default ``soup``), ``label``, ``members`` (an ensemble's ingredient names),
    ``coefficients``, ``history`` (greedy), ``alpha`` and ``interpolated`` (WiSE-FT),
    ``beta`` and ``curve`` (learned soups), ``held_out_accuracy``. ``info`` holds anything
    else worth keeping; a key of ``info`` named like a field is recorded as that field.
    """

    state_dict: Mapping[str, torch.Tensor] | None = None
    info: dict[str, Any] = field(default_factory=dict)
    name: str | None = None  # required when a recipe cooks several soups
    weights_from: Path | None = None  # reuse an existing weights file (hard link)
    ingredients: Sequence[Any] | None = None
    kind: str | None = None
    label: str | None = None
    members: Sequence[str] | None = None
    coefficients: Any = None
    history: Sequence[Mapping[str, Any]] | None = None
    alpha: float | None = None
    interpolated: str | None = None
    beta: float | None = None
    curve: Sequence[Any] | None = None
    held_out_accuracy: float | None = None

    def recorded(self) -> dict[str, Any]:
        """What ``soup.json`` records from the recipe: the fields set, in the order above,
        then ``info``'s keys in their own order."""
        typed = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in _PLAIN}
        return {**{k: v for k, v in typed.items() if v is not None}, **self.info}


_PLAIN = ("state_dict", "info", "name", "weights_from")


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
        yield replace(result, info=dict(result.info), name=result.name or recipe)
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
