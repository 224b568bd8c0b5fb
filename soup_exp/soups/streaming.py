"""Streaming sums of ingredients: the one loop behind uniform, greedy, WiSE-FT and Model Stock.

Two arithmetics (``ARITHMETICS``): ``sum`` accumulates ``sum_i w_i * x_i`` (in fp32 or
fp64) and scales once at the end; ``authors`` repeats the model-soups authors' ``main.py``
operation for operation -- each product ``x_i * w_i`` rounded, then added in order
(uniform soup), and a running average ``avg * (n / (n + 1.)) + x * (1. / (n + 1))``
(greedy soup) -- so their soups are reproduced bit for bit.

Ingredients are read one after another, tensor by tensor, by a background thread that
stays a few tensors ahead of the adder (file reads and ``add_`` both release the GIL), so
a cold soup is bound by the disk and a warm one by memory bandwidth. Memory is the fp32
accumulator plus a handful of tensors in flight, whatever the number of ingredients.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator, Sequence

import torch
from tqdm.auto import tqdm

from soup_exp.errors import ConfigError
from soup_exp.soups.ingredients import LazyWeights, float_keys

PREFETCH_TENSORS = 4
ARITHMETICS = ("sum", "authors")
_DONE = object()


def prefetched(items: Iterator, depth: int = PREFETCH_TENSORS) -> Iterator:
    """Run ``items`` in a daemon thread, ``depth`` items ahead; errors surface in the caller."""
    buffer: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                buffer.put(item)
            buffer.put(_DONE)
        except BaseException as e:  # re-raised in the consumer
            buffer.put(e)

    thread = threading.Thread(target=produce, daemon=True, name="soup-prefetch")
    thread.start()
    try:
        while True:
            item = buffer.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():
            try:
                buffer.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.01)


def stream_tensors(ingredients: Sequence[LazyWeights], keys: Sequence[str]) -> Iterator[tuple[int, str, torch.Tensor]]:
    for index, ing in enumerate(ingredients):
        for key, tensor in ing.tensors(keys):
            yield index, key, tensor


def weighted_sum(
    ingredients: Sequence[LazyWeights],
    weights: Sequence[float],
    *,
    accumulate_dtype: torch.dtype = torch.float32,
    prefetch: bool = True,
    progress: bool = False,
    desc: str = "souping",
    transform: Callable[[int, str, torch.Tensor], torch.Tensor] | None = None,
    round_products: bool = False,
) -> dict[str, torch.Tensor]:
    """``sum_i weights[i] * ingredient_i`` over floating tensors, in ``accumulate_dtype``.

    Non-floating tensors (integer buffers) are taken from the first ingredient and must be
    identical in all. ``transform(index, key, tensor)`` may rewrite a tensor as it is read.
    ``round_products`` rounds each ``tensor * weight`` before adding it, as the expression
    ``v * w + acc`` does (the fused ``add_(v, alpha=w)`` may round once instead).
    """
    if len(weights) != len(ingredients):
        raise ValueError(f"{len(weights)} weights for {len(ingredients)} ingredients")
    first = ingredients[0]
    floats = float_keys(first)
    others = [k for k in first.tensor_keys() if k not in set(floats)]
    acc: dict[str, torch.Tensor] = {}
    stream = stream_tensors(ingredients, floats)
    if prefetch:
        stream = prefetched(stream)
    total = sum(torch.Size(first.spec(k)[1]).numel() for k in floats) * len(ingredients)
    with tqdm(total=total, unit="param", unit_scale=True, desc=desc, disable=not progress, leave=False) as bar:
        for index, key, tensor in stream:
            if transform is not None:
                tensor = transform(index, key, tensor)
            w = float(weights[index])
            if key in acc:
                if round_products:
                    acc[key].add_(tensor.to(accumulate_dtype) * w)
                else:
                    acc[key].add_(tensor, alpha=w)
            else:
                acc[key] = tensor.to(accumulate_dtype, copy=True).mul_(w)
            bar.update(tensor.numel())
    for key in others:
        acc[key] = identical_buffer(ingredients, key)
    return {k: acc[k] for k in first.tensor_keys()}


def running_average(
    ingredients: Sequence[LazyWeights],
    *,
    dtype: torch.dtype = torch.float32,
    progress: bool = False,
    desc: str = "running average",
) -> dict[str, torch.Tensor]:
    """The authors' greedy-soup mean of ``ingredients`` in this order, bit for bit:
    ``avg_1 = x_1``, ``avg_{n+1} = avg_n * (n / (n + 1.)) + x_{n+1} * (1. / (n + 1))``."""
    first = ingredients[0]
    avg = {k: t.to(dtype, copy=True) for k, t in first.tensors(float_keys(first))}
    for n, ing in enumerate(tqdm(ingredients[1:], desc=desc, disable=not progress, leave=False), start=1):
        for key, tensor in ing.tensors(list(avg)):
            avg[key] = average_step(avg[key], tensor, n)
    for key in first.tensor_keys():
        if key not in avg:
            avg[key] = identical_buffer(ingredients, key)
    return {k: avg[k] for k in first.tensor_keys()}


def average_step(avg: torch.Tensor, new: torch.Tensor, n: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """``avg * (n / (n + 1.)) + new * (1. / (n + 1))``: the mean of ``n`` models plus one more,
    written exactly as the authors' ``main.py`` (into ``out`` when given)."""
    new = new.to(device=avg.device, dtype=avg.dtype)
    if out is None:
        return avg * (n / (n + 1.0)) + new * (1.0 / (n + 1))
    torch.mul(avg, n / (n + 1.0), out=out)
    return out.add_(new * (1.0 / (n + 1)))


def arithmetic_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the authors' arithmetic runs in: the ingredients' own, at least fp32."""
    return torch.promote_types(dtype, torch.float32)


def check_arithmetic(arithmetic: str) -> str:
    if arithmetic not in ARITHMETICS:
        raise ConfigError(f"soup arithmetic {arithmetic!r}: expected one of {', '.join(ARITHMETICS)}")
    return arithmetic


def identical_buffer(ingredients: Sequence[LazyWeights], key: str) -> torch.Tensor:
    from soup_exp.soups.ingredients import IngredientMismatchError

    ref = ingredients[0].get(key)
    for ing in ingredients[1:]:
        if not torch.equal(ing.get(key), ref):
            raise IngredientMismatchError(
                f"{ing.where}: non-float tensor '{key}' differs from {ingredients[0].where}; "
                "integer buffers cannot be averaged and must be identical in all ingredients."
            )
    return ref.clone()


def finalize(acc: dict[str, torch.Tensor], scale: float, like: LazyWeights) -> dict[str, torch.Tensor]:
    """``acc * scale`` cast back to the ingredients' dtypes, in place where the dtype allows."""
    out = {}
    for key, tensor in acc.items():
        dtype = like.spec(key)[0]
        if not dtype.is_floating_point:
            out[key] = tensor
            continue
        if scale != 1.0:
            tensor.mul_(scale)
        out[key] = tensor if tensor.dtype == dtype else tensor.to(dtype)
    return out
