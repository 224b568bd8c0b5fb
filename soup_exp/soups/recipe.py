"""What a recipe is, for built-in and user recipes alike.

A recipe is one callable plus one YAML file ``recipes/<name>.yaml`` whose ``_target_``
names it; every other key of that file (except ``label``) is a keyword parameter::

    def my_merge(ctx: SoupContext, *, alpha: Annotated[float, Range(0, 1)]) -> Soup: ...

It returns a state dict (a weight-space soup), a :class:`Soup` (weights and/or the
``soup.json`` fields it wants recorded), an iterable of named Soups (a recipe that cooks
several, like WiSE-FT's alphas), or None (nothing to cook, e.g. a missing zero-shot model).
Parameters are checked against the signature before any recipe runs, so a typo or an
out-of-range value costs a second, not a learned soup.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import torch

from soup_exp.errors import ConfigError
from soup_exp.utils.checks import Range, check_value

__all__ = ["Annotated", "Range", "Recipe", "Soup", "check_params", "load_recipe", "soups_of"]

# Keys of a recipe file that are the stage's, not the recipe's parameters.
STAGE_KEYS = ("_target_", "label")


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
class Recipe:
    """A selected recipe: its config name, callable, parameters and table label."""

    name: str
    fn: Callable[..., Any]
    params: dict[str, Any]
    label: str

    def cook(self, ctx: Any) -> Any:
        return self.fn(ctx, **self.params)


def load_recipe(name: str, node: Mapping[str, Any]) -> Recipe:
    """Resolve ``recipes.<name>`` (a plain mapping) and check its parameters."""
    from hydra.utils import get_method

    target = node.get("_target_")
    if not target:
        raise ConfigError(f"recipes.{name} has no _target_ (the callable that cooks it)")
    try:
        fn = get_method(str(target))
    except Exception as err:  # hydra wraps import errors in its own type
        raise ConfigError(f"recipes.{name}._target_={target!r} cannot be imported: {err}") from err
    params = {k: v for k, v in node.items() if k not in STAGE_KEYS}
    check_params(fn, params, f"recipes.{name}")
    return Recipe(name, fn, params, str(node.get("label") or name))


def check_params(fn: Callable[..., Any], params: Mapping[str, Any], where: str) -> None:
    """Unknown, missing, mistyped or out-of-range parameters of ``fn(ctx, **params)``."""
    signature = inspect.signature(fn)
    accepted = [p for p in list(signature.parameters.values())[1:]
                if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]
    takes_any = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
    names = {p.name for p in accepted}
    unknown = sorted(set(params) - names)
    if unknown and not takes_any:
        raise ConfigError(f"{where}: unknown parameter(s) {unknown}; {_qualname(fn)} takes "
                          f"{sorted(names) or 'none'}")
    missing = sorted(p.name for p in accepted if p.default is p.empty and p.name not in params)
    if missing:
        raise ConfigError(f"{where}: missing parameter(s) {missing} for {_qualname(fn)}")
    defaults = {p.name: p.default for p in accepted}
    for key, value in params.items():
        hint = _annotation(fn, key)
        if hint is not None and not (value is None and defaults.get(key) is None):
            check_value(f"{where}.{key}", value, hint)


def _annotation(fn: Callable[..., Any], name: str) -> Any:
    """One parameter's annotation, evaluated on its own (others may name types that exist
    only for type checkers)."""
    annotation = getattr(fn, "__annotations__", {}).get(name)
    if isinstance(annotation, str):
        try:
            return eval(annotation, getattr(fn, "__globals__", {}))  # noqa: S307 - source code, not input
        except Exception:
            return None
    return annotation


def _qualname(fn: Callable[..., Any]) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', fn)}"


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
