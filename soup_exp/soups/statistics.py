"""Per-ingredient statistics over the held-out set, cached on disk and resumable.

Fisher merging needs each ingredient's diagonal Fisher, RegMean each ingredient's Gram
matrices of its linear layers' inputs: one pass of one model over the held-out set each,
the most expensive part of either recipe. Each ingredient's statistic is one safetensors
file under ``<soups_dir>/.cache/statistics/<kind>/``, named by a hash of what it is computed
from (the ingredient's weights file, the held-out data and numerics, the recipe's estimator
settings), written atomically when that ingredient's pass ends. So a rerun, a resumed
stage or another recipe with the same settings reads finished statistics instead of
passing over the held-out set again, and a pass interrupted midway redoes only the
ingredient it was on. An ingredient held in memory (no weights file) has no identity to
key a file by: its statistic is computed every time.

The merge then reads the statistic files as it reads the ingredients, tensor by tensor
(:class:`~soup_exp.soups.ingredients.LazyWeights`), so it holds one or two tensors per
ingredient at a time, never N statistics.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from soup_exp.soups.context import SoupContext
from soup_exp.soups.freshness import weights_identity
from soup_exp.soups.ingredients import LazyWeights, SafetensorsSource, StateDictSource
from soup_exp.utils.hashing import stable_hash
from soup_exp.utils.io import atomic_save_safetensors

log = logging.getLogger(__name__)

Compute = Callable[[LazyWeights], dict[str, torch.Tensor]]


def statistics_dir(soups_dir: Path, kind: str) -> Path:
    """Where statistics of ``kind`` (``fisher``, ``gram``) are cached."""
    return Path(soups_dir) / ".cache" / "statistics" / kind


@dataclass
class Statistics:
    """One statistic file per ingredient, in pool order, and which ones a pass computed."""

    files: list[LazyWeights]
    computed: list[str]
    reused: list[str]


def statistic_identity(ctx: SoupContext, ing: LazyWeights, kind: str, settings: Mapping[str, Any]) -> dict[str, Any]:
    """What one ingredient's statistic is computed from (its cache key is a hash of it)."""
    return {"kind": kind, "ingredient": ing.name, "weights": weights_identity(ing.path),
            "held_out": ctx.judge.held_out_identity, "settings": dict(settings)}


def ingredient_statistics(ctx: SoupContext, kind: str, settings: Mapping[str, Any], compute: Compute) -> Statistics:
    """``compute(ingredient)`` for every ingredient of the pool, or its cached result.

    ``compute`` makes one held-out pass (:func:`held_out_examples`) and returns float tensors
    named as the recipe will look them up; ``settings`` are the parameters the result
    depends on besides the weights and the held-out data."""
    ctx.judge.evaluator  # noqa: B018 - records the held-out data as an input of the soup
    directory = statistics_dir(ctx.store.soups_dir, kind)
    files: list[LazyWeights] = []
    computed: list[str] = []
    reused: list[str] = []
    for ing in tqdm(ctx.pool.ingredients, desc=f"{kind} statistics", disable=not ctx.progress, leave=False):
        identity = statistic_identity(ctx, ing, kind, settings)
        path = directory / f"{ing.name}-{stable_hash(identity)}.safetensors" if ing.path is not None else None
        if path is not None and path.is_file():
            reused.append(ing.name)
        else:
            tensors = compute(ing)
            computed.append(ing.name)
            if path is None:
                files.append(LazyWeights(f"{kind}:{ing.name}", StateDictSource({k: v.detach().cpu() for k, v in tensors.items()})))
                continue
            atomic_save_safetensors(tensors, path, metadata={"identity": json.dumps(identity, sort_keys=True)})
        files.append(LazyWeights(f"{kind}:{ing.name}", SafetensorsSource(path), path=path))
    if reused:
        log.info("recipe %s: %s statistics of %d of %d ingredients reused from %s", ctx.recipe, kind, len(reused),
                 len(files), directory)
    return Statistics(files, computed, reused)


def held_out_examples(ctx: SoupContext, batch_size: int, examples: int | None
                      ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One pass over the held-out set (counted as one held-out pass), in the judge's seeded
    order, on the judge's device; only its first ``examples`` images when given."""
    left = examples
    for images, targets in ctx.judge.heldout_batches(batch_size, 0):
        if left is not None:
            images, targets = images[:left], targets[:left]
            left -= len(targets)
        yield images, targets
        if left == 0:
            return


def weights_on(ing: LazyWeights, device: torch.device) -> dict[str, torch.Tensor]:
    """The ingredient's tensors on ``device``, for ``functional_call`` over the judge's skeleton
    (one read of the ingredient)."""
    return {key: tensor.to(device) for key, tensor in ing.tensors()}
