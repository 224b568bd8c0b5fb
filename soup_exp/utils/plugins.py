"""Plugins: one callable plus one YAML file whose ``_target_`` names it.

Recipes (``recipes/<name>.yaml``) and analyses (``analyses/<name>.yaml``) are both
written this way: every key of the file except ``_target_`` and ``label`` is a keyword
parameter of ``fn(ctx, **params)``, checked against the signature before anything runs,
so a typo or an out-of-range value costs a second, not an hour::

    def my_thing(ctx, *, alpha: Annotated[float, Range(0, 1)], names: list[str] | None = None): ...
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from soup_exp.errors import ConfigError
from soup_exp.utils.checks import check_value

__all__ = ["Plugin", "check_params", "load_plugin", "plan_line", "selected_plugins"]

# Keys of a plugin file that are the stage's, not the callable's parameters.
STAGE_KEYS = ("_target_", "label")


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
    loose = sorted(key for key, node in (nodes or {}).items() if not isinstance(node, Mapping))
    if loose:
        target = (nodes or {}).get("_target_")
        raise ConfigError(
            f"{group}: {', '.join(loose)} sit directly under {group}, so a selected file"
            + (f" (the one with _target_: {target})" if target else "")
            + f" lacks its first line `# @package {group}.<name>`; add it, with the file's name as <name>")
    plugins = [load_plugin(group, check_name(name, group), node) for name, node in (nodes or {}).items()
               if isinstance(node, Mapping) and node.get("_target_")]
    if not plugins:
        raise ConfigError(f"nothing selected in {group}: choose with {group}=[{example},...] "
                          f"(one file each in the {group}/ config group)")
    return plugins


def plan_line(plugin: Plugin, done: bool, todo: str) -> str:
    """A dry run's line for a selected plugin: name, status, label and parameters."""
    params = ", ".join(f"{k}={v}" for k, v in plugin.params.items())
    return f"{plugin.name} [{'done, skipped' if done else todo}] {plugin.label}" + (f": {params}" if params else "")


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
    only for type checkers) in the module of the function a decorator wrapped."""
    annotation = getattr(fn, "__annotations__", {}).get(name)
    if isinstance(annotation, str):
        try:
            return eval(annotation, getattr(inspect.unwrap(fn), "__globals__", {}))  # noqa: S307 - source code, not input
        except Exception:
            return None
    return annotation


def _qualname(fn: Callable[..., Any]) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', fn)}"
