"""Per-tensor kernels on one streaming engine: a weight-space merge written as one function.

A kernel is ``fn(tensors, base, **params) -> Tensor``: for one tensor name, ``tensors``
holds that tensor of every ingredient and ``base`` the same tensor of the model the
recipe starts from (the LP init or the zero-shot model, as its YAML's ``base`` says; None
for ``base: null``). :func:`kernel` makes it a recipe; :func:`merge_tensors` runs it on
any ingredients. The engine, not the kernel, owns the rest:

- reads: tensor by tensor, each ingredient's file opened only for the read, a background
  thread a few tensors ahead (``PREFETCH_TENSORS``);
- numerics: every tensor arrives in ``accumulate_dtype`` on ``device``; the result is cast
  back to the ingredients' dtype on the CPU;
- checks: inputs are refused when NaN or infinite (naming the file), outputs of the wrong
  shape or with NaN or infinite values (naming the recipe and the tensor); integer buffers
  are copied, and must be identical in every ingredient and the base.

``tensors`` is lazy: iterating it once streams the N tensors, so a kernel that keeps a
running sum (task arithmetic, the uniform mean) holds one ingredient's tensor at a time and
its memory does not grow with N. A kernel that needs them together (``torch.stack``) holds
N copies of one tensor, never N models. Each further pass over ``tensors`` reads that
tensor again from every ingredient (TIES elects signs in one pass and averages in another).
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Literal

import torch
from tqdm.auto import tqdm

from soup_exp.errors import ConfigError
from soup_exp.soups.ingredients import (
    LazyWeights,
    WeightsLike,
    all_finite,
    float_keys,
    load_ingredients,
    resolve_ingredients,
    validate_ingredients,
)
from soup_exp.soups.recipe import Soup
from soup_exp.soups.streaming import identical_buffer, prefetched

__all__ = ["BASES", "Kernel", "KernelFn", "Tensors", "kernel", "merge_tensors"]

log = logging.getLogger(__name__)

KernelFn = Callable[..., torch.Tensor]
BASES = ("lp", "zeroshot")


class Tensors:
    """One tensor name's tensor of every ingredient, in pool order; read as it is iterated.

    The first pass takes the tensors the engine's reader thread prefetched; every later
    pass reads them again. The tensors may share memory with an in-memory ingredient:
    compute new tensors from them rather than writing into them.
    """

    def __init__(self, key: str, ingredients: Sequence[LazyWeights], stream: Iterator[torch.Tensor],
                 cast: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.key = key
        self._ingredients = ingredients
        self._stream = stream
        self._cast = cast
        self._taken = 0
        self._streamed = False

    def __len__(self) -> int:
        return len(self._ingredients)

    def __iter__(self) -> Iterator[torch.Tensor]:
        if self._streamed:
            return (self._cast(ing.get(self.key)) for ing in self._ingredients)
        self._streamed = True
        return self._first_pass()

    def _first_pass(self) -> Iterator[torch.Tensor]:
        while self._taken < len(self):
            self._taken += 1
            yield self._cast(next(self._stream))

    def finish(self) -> None:
        """Skip what the kernel did not read of the first pass, so the next name starts aligned."""
        while self._taken < len(self):
            self._taken += 1
            next(self._stream)


def merge_tensors(
    ingredients: WeightsLike | Iterable[WeightsLike],
    fn: KernelFn,
    *,
    base: WeightsLike | None = None,
    params: Mapping[str, Any] | None = None,
    accumulate_dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    prefetch: bool = True,
    progress: bool = False,
    name: str | None = None,
) -> dict[str, torch.Tensor]:
    """``fn(tensors, base, **params)`` for every floating tensor of the pool; a state dict
    in the ingredients' dtypes. ``ingredients`` and ``base`` are what :func:`uniform_soup`
    takes (paths, run directories, state dicts); ``name`` (the recipe) heads the error a bad
    output raises."""
    ingredients = load_ingredients(ingredients)
    if base is not None:
        base = _one(resolve_ingredients(base, kinds=None))
        validate_ingredients([ingredients[0], base])
    first, params, device = ingredients[0], dict(params or {}), torch.device(device)
    where = f"recipe {name}" if name else f"kernel {getattr(fn, '__qualname__', fn)}"
    keys = float_keys(first)

    def cast(tensor: torch.Tensor) -> torch.Tensor:
        return tensor.to(device=device, dtype=accumulate_dtype)

    def reads() -> Iterator[torch.Tensor]:
        for key in keys:
            for ing in ingredients:
                yield ing.get(key)

    stream = prefetched(reads()) if prefetch else reads()
    out: dict[str, torch.Tensor] = {}
    total = sum(torch.Size(first.spec(k)[1]).numel() for k in keys) * len(ingredients)
    try:
        with tqdm(total=total, unit="param", unit_scale=True, desc=name or "kernel", disable=not progress,
                  leave=False) as bar:
            for key in keys:
                tensors = Tensors(key, ingredients, stream, cast)
                result = fn(tensors, None if base is None else cast(base.get(key)), **params)
                tensors.finish()
                out[key] = _checked(result, key, first.spec(key), where)
                bar.update(out[key].numel() * len(ingredients))
    finally:
        close = getattr(stream, "close", None)
        if close is not None:
            close()
    for key in first.tensor_keys():
        if key not in out:
            out[key] = identical_buffer([*ingredients, *([base] if base is not None else [])], key)
    return {k: out[k] for k in first.tensor_keys()}


def _one(models: list[LazyWeights]) -> LazyWeights:
    if len(models) != 1:
        raise ConfigError(f"a kernel's base is one model, got {len(models)}: {', '.join(m.name for m in models)}")
    return models[0]


def _checked(result: Any, key: str, spec: tuple[torch.dtype, tuple[int, ...]], where: str) -> torch.Tensor:
    dtype, shape = spec
    if not isinstance(result, torch.Tensor):
        raise ConfigError(f"{where}: tensor '{key}': the kernel returned {type(result).__name__}, not a tensor")
    if tuple(result.shape) != tuple(shape):
        raise ConfigError(f"{where}: tensor '{key}': the kernel returned shape {list(result.shape)}, "
                          f"expected {list(shape)}")
    if not result.is_floating_point():
        raise ConfigError(f"{where}: tensor '{key}': the kernel returned {result.dtype}, not a floating tensor")
    if not all_finite(result):
        raise ConfigError(f"{where}: tensor '{key}': the kernel returned NaN or infinite values; nothing was written")
    return result.to(device="cpu", dtype=dtype)


class Kernel:
    """A kernel as a recipe: ``recipes/<name>.yaml`` names it in ``_target_``, its ``base``
    key says what the kernel's ``base`` is (``lp``, ``zeroshot`` or null), every other key
    is a parameter of the kernel. Calling ``.fn`` runs the kernel on tensors directly."""

    def __init__(self, fn: KernelFn) -> None:
        functools.update_wrapper(self, fn)
        self.fn = fn
        given = list(inspect.signature(fn).parameters.values())
        if len(given) < 2 or any(p.kind not in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in given[:2]):
            raise TypeError(f"kernel {fn.__qualname__} must take (tensors, base, **params)")
        choice = Literal["lp", "zeroshot"] | None
        self.__signature__ = inspect.Signature([
            inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_ONLY),
            inspect.Parameter("base", inspect.Parameter.KEYWORD_ONLY, annotation=choice),
            *[p if p.kind in (p.KEYWORD_ONLY, p.VAR_KEYWORD) else p.replace(kind=p.KEYWORD_ONLY)
              for p in given[2:] if p.kind is not p.VAR_POSITIONAL],
        ])
        self.__annotations__ = {**getattr(fn, "__annotations__", {}), "base": choice}

    def __call__(self, ctx: Any, *, base: str | None, **params: Any) -> Soup | None:
        start = None
        if base is not None:
            start = ctx.pool.base(base)
            if start is None:
                log.warning("recipe %s skipped: its base '%s' needs %s", ctx.recipe, base, ctx.pool.base_needs(base))
                return None
        state_dict = merge_tensors(ctx.pool.ingredients, self.fn, base=start, params=params,
                                   accumulate_dtype=ctx.accumulate_dtype, device=ctx.kernel_device,
                                   progress=ctx.progress, name=ctx.recipe)
        info: dict[str, Any] = {"base": start.name} if start is not None else {}
        return Soup(state_dict, info)


def kernel(fn: KernelFn) -> Kernel:
    """Make ``fn(tensors, base, **params) -> Tensor`` a recipe that the engine runs per tensor."""
    return Kernel(fn)
