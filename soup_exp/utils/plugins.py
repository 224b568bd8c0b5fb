"""Plugins: one callable plus one YAML file whose ``_target_`` names it.

Recipes (``recipes/<name>.yaml``) and analyses (``analysis/<name>.yaml``) are both
written this way: every key of the file except ``_target_`` and ``label`` is a keyword
parameter of ``fn(ctx, **params)``, checked against the signature before anything runs,
so a typo or an out-of-range value costs a second, not an hour::

    def my_thing(ctx, *, alpha: Annotated[float, Range(0, 1)], names: list[str] | None = None): ...
"""

from __future__ import annotations

import inspect
import math
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any

from soup_exp.errors import ConfigError

__all__ = ["Annotated", "Plugin", "Range", "check_params", "load_plugin", "selected_plugins"]

# Keys of a plugin file that are the stage's, not the callable's parameters.
STAGE_KEYS = ("_target_", "label")


@dataclass(frozen=True)
class Range:
    """A bound on a numeric parameter, checked at config time: ``Annotated[float, Range(0)]``."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False

    def check(self, key: str, value: float) -> None:
        too_low = self.low is not None and (value <= self.low if self.low_open else value < self.low)
        too_high = self.high is not None and value > self.high
        if too_low or too_high:
            low = "-inf" if self.low is None else f"{self.low:g}"
            high = "inf" if self.high is None else f"{self.high:g}"
            bracket = "(" if self.low_open or self.low is None else "["
            raise ConfigError(f"{key}={value!r}: expected a value in {bracket}{low}, {high}]")


@dataclass(frozen=True)
class Plugin:
    """A selected plugin: its config name, callable, parameters and display label."""

    name: str
    fn: Callable[..., Any]
    params: dict[str, Any]
    label: str
    target: str = ""

    def __call__(self, ctx: Any) -> Any:
        return self.fn(ctx, **self.params)


def load_plugin(group: str, name: str, node: Mapping[str, Any]) -> Plugin:
    """Resolve ``<group>.<name>`` (a plain mapping) and check its parameters."""
    from hydra.utils import get_method

    target = node.get("_target_")
    if not target:
        raise ConfigError(f"{group}.{name} has no _target_ (the callable that runs it)")
    try:
        fn = get_method(str(target))
    except Exception as err:  # hydra wraps import errors in its own type
        raise ConfigError(f"{group}.{name}._target_={target!r} cannot be imported: {err}") from err
    params = {k: v for k, v in node.items() if k not in STAGE_KEYS}
    check_params(fn, params, f"{group}.{name}")
    return Plugin(name, fn, params, str(node.get("label") or name), str(target))


def selected_plugins(nodes: Mapping[str, Any] | None, group: str, check_name: Callable[[str, str], str],
                     example: str) -> list[Plugin]:
    """The plugins of a composed group in selection order, parameters checked; at least one.

    Entries without ``_target_`` are settings an experiment gives a plugin that is not
    selected this time (e.g. ``recipes.learned_by_layer.epochs`` with ``recipes=[uniform]``).
    """
    plugins = [load_plugin(group, check_name(name, group), node) for name, node in (nodes or {}).items()
               if isinstance(node, Mapping) and node.get("_target_")]
    if not plugins:
        raise ConfigError(f"nothing selected in {group}: choose with {group}=[{example},...] "
                          f"(one file each in the {group}/ config group)")
    return plugins


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
    for key, value in params.items():
        hint = _annotation(fn, key)
        if hint is not None:
            _check_value(f"{where}.{key}", value, hint)


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


def _check_value(key: str, value: Any, hint: Any) -> None:
    base, bounds = hint, ()
    if typing.get_origin(hint) is Annotated:
        base, *bounds = typing.get_args(hint)
    origin = typing.get_origin(base)
    if value is None:
        return
    if origin in (typing.Union, types.UnionType):
        _check_union(key, value, [arm for arm in typing.get_args(base) if arm is not type(None)])
    elif origin is typing.Literal:
        if value not in typing.get_args(base):
            raise ConfigError(f"{key}={value!r}: expected one of {', '.join(map(str, typing.get_args(base)))}")
    elif origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}={value!r}: expected a list")
        (item,) = typing.get_args(base) or (Any,)
        for i, element in enumerate(value):
            _check_value(f"{key}[{i}]", element, item)
    elif base in (int, float):
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ConfigError(f"{key}={value!r}: expected a finite number")
        if base is int and not isinstance(value, int):
            raise ConfigError(f"{key}={value!r}: expected an integer")
    elif base is bool and not isinstance(value, bool):
        raise ConfigError(f"{key}={value!r}: expected true or false")
    elif base is str and not isinstance(value, str):
        raise ConfigError(f"{key}={value!r}: expected a string")
    for bound in bounds:
        if isinstance(bound, Range):
            bound.check(key, value)


def _check_union(key: str, value: Any, arms: list[Any]) -> None:
    """``X | Y``: the value passes when it passes one arm."""
    expected = []
    for arm in arms:
        try:
            _check_value(key, value, arm)
            return
        except ConfigError as err:
            expected.append(str(err).rpartition(": expected ")[2])
    if expected:
        raise ConfigError(f"{key}={value!r}: expected {' or '.join(expected)}")


def _qualname(fn: Callable[..., Any]) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', fn)}"
