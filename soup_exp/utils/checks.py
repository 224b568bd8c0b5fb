"""Checking config values against type hints, once, for every kind of setting.

A setting is described by a type hint, with bounds as ``Annotated[int, Range(1)]``;
``check_value`` turns a wrong value into a :class:`ConfigError` naming the key and what
was expected. Recipe parameters (their signatures), ``train.*`` and the stage settings
below all go through it, before anything is loaded.
"""

from __future__ import annotations

import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from soup_exp.errors import ConfigError
from soup_exp.utils.config import config_get, to_plain


@dataclass(frozen=True)
class Range:
    """A bound on a numeric setting, checked at config time: ``Annotated[float, Range(0)]``."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def check(self, key: str, value: float) -> None:
        too_low = self.low is not None and (value <= self.low if self.low_open else value < self.low)
        too_high = self.high is not None and (value >= self.high if self.high_open else value > self.high)
        if too_low or too_high:
            low = "-inf" if self.low is None else f"{self.low:g}"
            high = "inf" if self.high is None else f"{self.high:g}"
            left = "(" if self.low_open or self.low is None else "["
            right = ")" if self.high_open else "]"
            raise ConfigError(f"{key}={value!r}: expected a value in {left}{low}, {high}{right}")


def is_fraction(value: Any) -> bool:
    """A finite number in [0, 1], not a bool: what an accuracy on disk must be (a
    percentage such as 57.0, NaN or Infinity is not)."""
    return (not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)
            and 0.0 <= value <= 1.0)


POSITIVE = Annotated[float, Range(0.0, low_open=True)]
NON_NEGATIVE = Annotated[float, Range(0.0)]
POSITIVE_INT = Annotated[int, Range(1)]
NON_NEGATIVE_INT = Annotated[int, Range(0)]


def check_value(key: str, value: Any, hint: Any) -> None:
    """``value`` fits ``hint`` (int, float, bool, str, Literal, list[...], unions such as ``X | None``,
    Annotated with :class:`Range`); anything else is a ConfigError naming ``key``."""
    base, bounds = hint, ()
    if typing.get_origin(hint) is Annotated:
        base, *bounds = typing.get_args(hint)
    origin = typing.get_origin(base)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(base) if a is not type(None)]
        if value is None and len(options) < len(typing.get_args(base)):
            return
        _check_union(key, value, options)
        return
    if value is None:
        raise ConfigError(f"{key} is null: expected {_describe(base)}")
    if origin is Literal:
        if value not in typing.get_args(base):
            raise ConfigError(f"{key}={value!r}: expected one of {', '.join(map(str, typing.get_args(base)))}")
    elif origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}={value!r}: expected a list")
        (item,) = typing.get_args(base) or (Any,)
        for i, element in enumerate(value):
            check_value(f"{key}[{i}]", element, item)
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


def _check_union(key: str, value: Any, options: list[Any]) -> None:
    """``X | Y``: the value passes when it fits one option; else every option is named."""
    if len(options) == 1:
        check_value(key, value, options[0])
        return
    expected = []
    for option in options:
        try:
            check_value(key, value, option)
            return
        except ConfigError as err:
            expected.append(str(err).rpartition(": expected ")[2])
    raise ConfigError(f"{key}={value!r}: expected {' or '.join(expected)}")


def _describe(hint: Any) -> str:
    if typing.get_origin(hint) is Literal:
        return "one of " + ", ".join(map(str, typing.get_args(hint)))
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(hint, "a value")


def check_settings(cfg: Any, schema: Mapping[str, Any]) -> None:
    """Check every dotted key of ``schema`` that ``cfg`` has (sections a stage lacks are skipped)."""
    for key, hint in schema.items():
        parent, _, leaf = key.rpartition(".")
        node = config_get(cfg, parent) if parent else cfg
        if node is not None and hasattr(node, "get") and leaf in node:
            check_value(key, to_plain(node.get(leaf)), hint)


ANY_VALUE = Any | None  # a setting whose value another check (or its reader) validates

# The settings every stage shares (conf/_common.yaml, eval/, recipe_set/, pipeline.yaml).
STAGE_SETTINGS: dict[str, Any] = {
    "seed": int,
    "device": str,
    "precision": Literal["bf16", "fp16", "fp32"],
    "num_workers": NON_NEGATIVE_INT,
    "cpu_threads": POSITIVE_INT | None,
    "progress": bool,
    "eval.datasets": list[str],
    "eval.batch_size": POSITIVE_INT,
    "eval.num_workers": NON_NEGATIVE_INT | None,
    "eval.read_threads": POSITIVE_INT,
    "eval.models_per_pass": POSITIVE_INT,
    "eval.force": bool,
    "eval.precision": ANY_VALUE,
    "eval.ensemble_logits": ANY_VALUE,
    "eval.cache.enabled": bool,
    "eval.cache.dir": ANY_VALUE,
    "soup.pool": ANY_VALUE,
    "soup.arithmetic": ANY_VALUE,  # checked by SoupSettings (soups/settings.py)
    "soup.accumulate_dtype": ANY_VALUE,  # checked by SoupSettings (soups/settings.py)
    "soup.kernel_device": str,
    "pipeline.sweep_size": NON_NEGATIVE_INT,
    "pipeline.sweep": ANY_VALUE,
    "pipeline.stages": list[str],
}
# Sections whose every key is in STAGE_SETTINGS: another key there is a typo, which would
# otherwise be accepted and ignored (``+eval.batchsize=3``). train.*, recipes.* and
# analyses.* are checked against their own schemas.
CLOSED_SECTIONS = ("eval", "eval.cache", "soup", "pipeline")


def check_known_keys(cfg: Any, schema: Mapping[str, Any] = STAGE_SETTINGS,
                     sections: tuple[str, ...] = CLOSED_SECTIONS) -> None:
    """Every key of a closed section is a known setting; else one line naming the key and
    the nearest known one."""
    import difflib

    for section in sections:
        node = config_get(cfg, section)
        if node is None or not hasattr(node, "keys"):
            continue
        known = sorted({k[len(section) + 1:].partition(".")[0] for k in schema if k.startswith(f"{section}.")})
        for key in node:
            if str(key) not in known:
                near = difflib.get_close_matches(str(key), known, n=1, cutoff=0.6)
                hint = f"did you mean {section}.{near[0]}? " if near else ""
                raise ConfigError(f"{section}.{key} is not a setting ({hint}known: {', '.join(known)})")


def check_stage_settings(cfg: Any) -> None:
    """The shared settings of a stage config, checked before the stage touches anything."""
    check_known_keys(cfg)
    check_settings(cfg, STAGE_SETTINGS)
    for key in ("device", "soup.kernel_device"):
        device = config_get(cfg, key)
        if isinstance(device, str) and device != "auto":
            import torch

            try:
                torch.device(device)
            except (RuntimeError, ValueError) as err:
                raise ConfigError(f"{key}={device!r}: expected auto, cpu, cuda or cuda:<index> ({err})") from err
