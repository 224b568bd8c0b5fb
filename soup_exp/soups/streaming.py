"""Streaming sums of ingredients: the one loop behind uniform, greedy, WiSE-FT and Model Stock.

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

from soup_exp.soups.ingredients import Ingredient, float_keys

PREFETCH_TENSORS = 4
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


def stream_tensors(ingredients: Sequence[Ingredient], keys: Sequence[str]) -> Iterator[tuple[int, str, torch.Tensor]]:
    for index, ing in enumerate(ingredients):
        for key, tensor in ing.tensors(keys):
            yield index, key, tensor


def weighted_sum(
    ingredients: Sequence[Ingredient],
    weights: Sequence[float],
    *,
    accumulate_dtype: torch.dtype = torch.float32,
    prefetch: bool = True,
    progress: bool = False,
    desc: str = "souping",
    transform: Callable[[int, str, torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """``sum_i weights[i] * ingredient_i`` over floating tensors, in ``accumulate_dtype``.

    Non-floating tensors (integer buffers) are taken from the first ingredient and must be
    identical in all. ``transform(index, key, tensor)`` may rewrite a tensor as it is read.
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
                acc[key].add_(tensor, alpha=w)
            else:
                acc[key] = tensor.to(accumulate_dtype, copy=True).mul_(w)
            bar.update(tensor.numel())
    for key in others:
        acc[key] = _identical_buffer(ingredients, key)
    return {k: acc[k] for k in first.tensor_keys()}


def _identical_buffer(ingredients: Sequence[Ingredient], key: str) -> torch.Tensor:
    from soup_exp.soups.ingredients import IngredientMismatchError

    ref = ingredients[0].get(key)
    for ing in ingredients[1:]:
        if not torch.equal(ing.get(key), ref):
            raise IngredientMismatchError(
                f"{ing.where}: non-float tensor '{key}' differs from {ingredients[0].where}; "
                "integer buffers cannot be averaged and must be identical in all ingredients."
            )
    return ref.clone()


def finalize(acc: dict[str, torch.Tensor], scale: float, like: Ingredient) -> dict[str, torch.Tensor]:
    """``acc * scale`` cast back to the ingredients' dtypes, in place where the dtype allows."""
    out = {}
    for key, tensor in acc.items():
        dtype = like.spec(key)[0]
        if not dtype.is_floating_point:
            out[key] = tensor
            continue
        tensor.mul_(scale)
        out[key] = tensor if tensor.dtype == dtype else tensor.to(dtype)
    return out
