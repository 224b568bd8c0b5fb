"""Angle between fine-tuning directions vs the gain of the pairwise soup (paper, Section 3).

For a pair of ingredients ``a``, ``b`` fine-tuned from the same initialisation ``θ0``, the
angle is the one between ``a - θ0`` and ``b - θ0`` over all floating tensors flattened
into one vector; the soup gain is the accuracy of the 50/50 soup minus the mean accuracy
of ``a`` and ``b``, and the ensemble gain the same for their logit ensemble. The paper
finds larger angles give larger soup gains.

The Gram matrix of all directions is accumulated tensor by tensor (one tensor of every
ingredient at a time, split into blocks of ingredients beyond ``budget_bytes``), so memory
does not grow with the model, and every pair's angle comes from one pass over the files.
"""

from __future__ import annotations

import itertools
import logging
import math
import random
from collections.abc import Mapping, Sequence
from typing import Annotated, Any

import torch
from tqdm.auto import tqdm

from soup_exp.analysis.context import AnalysisContext
from soup_exp.soups.ingredients import LazyWeights, float_keys
from soup_exp.soups.uniform import uniform_soup
from soup_exp.utils.checks import Range

log = logging.getLogger(__name__)

GRAM_BUDGET = 256 * 2**20  # bytes of float64 directions held at once


def direction_gram(init: LazyWeights, models: Sequence[LazyWeights], *, budget_bytes: int = GRAM_BUDGET,
                   progress: bool = False) -> torch.Tensor:
    """``G[i, j] = <models[i] - init, models[j] - init>`` over every floating tensor (float64)."""
    n = len(models)
    gram = torch.zeros(n, n, dtype=torch.float64)
    for key in tqdm(float_keys(init), desc="fine-tuning directions", unit="tensor", disable=not progress,
                    leave=False):
        base = init.get(key).to(torch.float64).flatten()
        rows = max(1, budget_bytes // (2 * 8 * max(1, base.numel())))
        blocks = [range(start, min(start + rows, n)) for start in range(0, n, rows)]
        for index, block in enumerate(blocks):
            left = _directions(models, block, key, base)
            gram[block.start:block.stop, block.start:block.stop] += left @ left.T
            for other in blocks[index + 1:]:
                cross = left @ _directions(models, other, key, base).T
                gram[block.start:block.stop, other.start:other.stop] += cross
                gram[other.start:other.stop, block.start:block.stop] += cross.T
    return gram


def _directions(models: Sequence[LazyWeights], block: range, key: str, base: torch.Tensor) -> torch.Tensor:
    return torch.stack([models[i].get(key).to(torch.float64).flatten() - base for i in block])


def angles_degrees(gram: torch.Tensor) -> torch.Tensor:
    """Pairwise angles (degrees) from a Gram matrix; NaN where a direction is zero."""
    norms = gram.diagonal().clamp(min=0).sqrt()
    cosine = gram / (norms[:, None] * norms[None, :])
    return torch.rad2deg(torch.arccos(cosine.clamp(-1.0, 1.0)))


def differs_in(first: Mapping[str, Any], second: Mapping[str, Any]) -> str:
    """The hyperparameter a pair differs in: its name, ``several``, ``none``, or
    ``not recorded`` when neither ingredient records hyperparameters."""
    if not first and not second:
        return "not recorded"
    differing = [k for k in sorted(set(first) | set(second)) if first.get(k) != second.get(k)]
    if not differing:
        return "none"
    return differing[0] if len(differing) == 1 else "several"


def choose_pairs(n: int, max_pairs: int | None, seed: int) -> list[tuple[int, int]]:
    """Every pair ``i < j``, or a seeded sample of ``max_pairs`` of them (in index order)."""
    pairs = list(itertools.combinations(range(n), 2))
    if max_pairs is not None and max_pairs < len(pairs):
        pairs = sorted(random.Random(seed).sample(pairs, max_pairs))
    return pairs


def angles_analysis(
    ctx: AnalysisContext,
    *,
    init: str,
    metric: str,
    max_pairs: Annotated[int, Range(1)] | None,
    seed: int,
) -> dict[str, Any]:
    """Analysis ``angles``: per pair of ingredients (all, or ``max_pairs`` drawn with
    ``seed``), the angle between their directions from ``init``, and the gains of their
    soup and of their logit ensemble on ``metric`` (a dataset or ``avg_shifts``)."""
    origin = ctx.pool.initialisation(init)
    models = [ing for ing in ctx.pool.ingredients if not _same(ing, origin)]
    if len(models) < 2:
        log.warning("angles: fewer than two ingredients besides the initialisation %s; nothing to compare",
                    origin.name)
        return {"pairs": 0}
    datasets = ctx.suite.datasets_for([metric])
    gram = direction_gram(origin, models, progress=ctx.progress)
    angles = angles_degrees(gram)
    individual = [ctx.suite.accuracies(m, datasets)[metric] for m in models]
    pairs = choose_pairs(len(models), max_pairs, seed)
    done = ctx.store.partial()
    todo = [(i, j) for i, j in pairs if _pair_key(models, i, j) not in done]

    def soups():
        for i, j in todo:
            state_dict = uniform_soup([models[i], models[j]], accumulate_dtype=ctx.accumulate_dtype,
                                      arithmetic=ctx.arithmetic)
            yield _pair_key(models, i, j), state_dict

    bar = tqdm(total=len(todo), desc="pairwise soups", disable=not ctx.progress, leave=False)
    for key, accuracies in ctx.suite.evaluate_weights(soups(), datasets):
        done[key] = accuracies
        ctx.store.save_partial(done)
        bar.update(1)
    bar.close()

    rows = []
    for i, j in pairs:
        a, b = models[i], models[j]
        mean = (individual[i] + individual[j]) / 2
        soup = float(done[_pair_key(models, i, j)][metric])
        ensemble = float(ctx.suite.ensemble_accuracies([a, b], datasets)[metric])
        rows.append({"a": a.name, "b": b.name, "angle_deg": float(angles[i, j]),
                     "differs_in": differs_in(ctx.pool.hparams(a), ctx.pool.hparams(b)),
                     "accuracy_a": individual[i], "accuracy_b": individual[j], "soup_accuracy": soup,
                     "ensemble_accuracy": ensemble, "soup_gain": soup - mean, "ensemble_gain": ensemble - mean})
    from soup_exp.reporting.analysis_figures import (
        plot_soup_gain_vs_angle,
        plot_soup_vs_ensemble_gain,
    )

    ctx.store.register(plot_soup_gain_vs_angle(rows, metric, ctx.store.out("soup_gain_vs_angle")))
    ctx.store.register(plot_soup_vs_ensemble_gain(rows, metric, ctx.store.out("soup_gain_vs_ensemble_gain")))
    soup_gains = [r["soup_gain"] for r in rows]
    return {
        "initialisation": origin.name, "metric": metric, "pairs": len(rows),
        "mean_angle_deg": _mean([r["angle_deg"] for r in rows]),
        "mean_soup_gain": _mean(soup_gains), "mean_ensemble_gain": _mean([r["ensemble_gain"] for r in rows]),
        "soup_beats_endpoints": sum(g > 0 for g in soup_gains) / len(rows),
        "corr_angle_soup_gain": _pearson([r["angle_deg"] for r in rows], soup_gains),
    }


def _same(a: LazyWeights, b: LazyWeights) -> bool:
    if a.path is not None and b.path is not None:
        return a.path.resolve() == b.path.resolve()
    return a.name == b.name


def _pair_key(models: Sequence[LazyWeights], i: int, j: int) -> str:
    return f"{models[i].name}|{models[j].name}"


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def _pearson(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Pearson correlation, or None when it is undefined (fewer than 3 pairs, a constant)."""
    if len(xs) < 3:
        return None
    mx, my = _mean(xs), _mean(ys)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    sxx = sum((x - mx) ** 2 for x in xs)
    syy = sum((y - my) ** 2 for y in ys)
    return sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else None
