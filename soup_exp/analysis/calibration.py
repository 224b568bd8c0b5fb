"""Calibration of individual models, soups and ensembles on ImageNet and each shift.

Confidence is the largest softmax probability over the dataset's targets (the projected
logits: ImageNet-R/A's 200 classes, ObjectNet's max over mapped classes), and an
ensemble's is that of the scores it predicts from (the evaluator's ``ensemble_logits``).
The expected calibration error (Guo et al., 2017) bins predictions by confidence into
``bins`` equal-width bins and averages ``|accuracy - mean confidence|`` over bins,
weighted by their share of images. Everything comes from cached logits.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import torch

from soup_exp.analysis.context import AnalysisContext
from soup_exp.soups.ingredients import LazyWeights
from soup_exp.utils.checks import Range
from soup_exp.vocabulary import HELD_OUT

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Bin:
    low: float
    high: float
    count: int
    confidence: float
    accuracy: float


def reliability_bins(confidence: torch.Tensor, correct: torch.Tensor, bins: int = 15) -> list[Bin]:
    """Equal-width confidence bins ``(b/B, (b+1)/B]`` (the first also takes 0) with their
    count, mean confidence and accuracy (0 for empty bins)."""
    confidence = confidence.double().flatten()
    correct = correct.double().flatten()
    index = (torch.ceil(confidence * bins) - 1).clamp(0, bins - 1).long()
    counts = torch.bincount(index, minlength=bins)
    conf_sum = torch.bincount(index, weights=confidence, minlength=bins)
    acc_sum = torch.bincount(index, weights=correct, minlength=bins)
    return [Bin(b / bins, (b + 1) / bins, int(counts[b]), float(conf_sum[b] / counts[b]) if counts[b] else 0.0,
                float(acc_sum[b] / counts[b]) if counts[b] else 0.0) for b in range(bins)]


def expected_calibration_error(confidence: torch.Tensor, correct: torch.Tensor, bins: int = 15) -> float:
    total = confidence.numel()
    return sum(b.count / total * abs(b.accuracy - b.confidence) for b in reliability_bins(confidence, correct, bins))


def confidence_and_correct(scores: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Top softmax probability and whether the argmax is the target, per image."""
    probabilities = torch.softmax(scores.double(), dim=1)
    confidence, prediction = probabilities.max(dim=1)
    return confidence, prediction.cpu() == targets.cpu()


@dataclass
class Calibrated:
    """A model whose calibration is measured: a saved model, or an ensemble's members."""

    name: str
    kind: str
    recipe: str
    label: str
    model: LazyWeights | None = None
    members: Sequence[LazyWeights] = ()
    curve: bool = True  # drawn in the reliability diagrams


def calibration_analysis(
    ctx: AnalysisContext,
    *,
    bins: Annotated[int, Range(2)],
    datasets: list[str] | None,
    wise_ft: bool,
) -> dict[str, Any]:
    """Analysis ``calibration``: ECE and reliability diagrams (``bins`` bins) of the zero-shot
    model, every ingredient, every soup and every ensemble on ``datasets`` (default: every
    evaluation set but held-out); WiSE-FT's interpolations only with ``wise_ft``."""
    names = datasets if datasets is not None else [d for d in ctx.suite.names if d != HELD_OUT]
    ctx.suite.datasets_for(names)
    models = _models(ctx, wise_ft)
    rows, curves = [], []
    for calibrated in models:
        for dataset in names:
            if calibrated.model is not None:
                scores = ctx.suite.target_scores(calibrated.model, dataset)
            else:
                scores = ctx.suite.ensemble_scores(list(calibrated.members), dataset)
            confidence, correct = confidence_and_correct(scores, ctx.suite.evaluator.dataset(dataset).targets)
            table = reliability_bins(confidence, correct, bins)
            base = {"model": calibrated.name, "kind": calibrated.kind, "recipe": calibrated.recipe,
                    "label": calibrated.label, "dataset": dataset}
            rows.append({**base, "ece": sum(b.count / len(confidence) * abs(b.accuracy - b.confidence) for b in table),
                         "accuracy": float(correct.double().mean()), "confidence": float(confidence.mean())})
            if calibrated.curve:
                curves += [{**base, "bin_low": b.low, "bin_high": b.high, "count": b.count,
                            "confidence": b.confidence, "accuracy": b.accuracy} for b in table]
    from soup_exp.reporting.analysis_figures import plot_ece, plot_reliability

    ctx.store.register(plot_ece(rows, names, ctx.store.out("calibration_ece")))
    ctx.store.register(plot_reliability(curves, names, ctx.store.out("reliability")))
    ece: dict[str, dict[str, float]] = {}
    for row in rows:
        ece.setdefault(row["model"], {})[row["dataset"]] = row["ece"]
    return {"bins": bins, "datasets": names, "ece": ece}


def _models(ctx: AnalysisContext, wise_ft: bool) -> list[Calibrated]:
    best = ctx.pool.ingredients[ctx.pool.best_index].name
    models = []
    if ctx.pool.zeroshot is not None:
        models.append(Calibrated("zeroshot", "zeroshot", "", "Zero-shot", model=ctx.pool.zeroshot))
    for ing in ctx.pool.ingredients:
        kind = str(ing.info.get("kind") or "finetune")
        models.append(Calibrated(ing.name, kind, "", ing.name, model=ing, curve=ing.name == best or kind == "lp"))
    for soup in ctx.pool.soups():
        if soup.kind == "wise_ft" and not wise_ft:
            continue
        models.append(Calibrated(soup.name, soup.kind, soup.recipe, soup.label, model=soup.weights,
                                 members=soup.members, curve=soup.kind != "wise_ft"))
    return models
