"""Calibration of individual models, soups and ensembles on ImageNet and each shift.

Confidence is the largest softmax probability over the dataset's targets (the projected
logits: ImageNet-R/A's 200 classes, ObjectNet's max over mapped classes), and an
ensemble's is that of the scores it predicts from (the evaluator's ``ensemble_logits``).
The expected calibration error (Guo et al., 2017) bins predictions by confidence and
averages ``|accuracy - mean confidence|`` over bins, weighted by their share of images,
by either convention: ``width`` (``bins`` equal-width bins of [0, 1]) or ``mass`` (``bins``
bins of equal counts, by confidence rank). Temperature scaling divides each model's scores
by one ``T > 0`` fitted on held-out (minimum NLL), which leaves its predictions as they
are and shows how much of its miscalibration one scalar removes. Everything comes from
cached logits.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import torch

from soup_exp.analysis.context import AnalysisContext
from soup_exp.errors import ConfigError
from soup_exp.soups.ingredients import LazyWeights
from soup_exp.utils.checks import Range
from soup_exp.vocabulary import HELD_OUT

log = logging.getLogger(__name__)

Binning = Literal["width", "mass"]
TEMPERATURE_RANGE = (1e-2, 1e2)  # the bracket searched; a fit at its edge is logged


@dataclass(frozen=True)
class Bin:
    low: float
    high: float
    count: int
    confidence: float
    accuracy: float


def reliability_bins(confidence: torch.Tensor, correct: torch.Tensor, bins: int = 15,
                     binning: Binning = "width") -> list[Bin]:
    """Confidence bins with their count, mean confidence and accuracy.

    ``width``: ``(b/B, (b+1)/B]`` (the first also takes 0), empty ones included with 0s.
    ``mass``: images ranked by confidence (a stable sort, so tied confidences keep dataset
    order) and cut into ``bins`` runs whose counts differ by at most one, the larger first;
    ``low``/``high`` are the run's smallest and largest confidence. Fewer images than bins
    give one bin per image."""
    confidence = confidence.double().flatten()
    correct = correct.double().flatten()
    if binning == "mass":
        return _equal_mass_bins(confidence, correct, bins)
    if binning != "width":
        raise ValueError(f"binning={binning!r}: expected width or mass")
    index = (torch.ceil(confidence * bins) - 1).clamp(0, bins - 1).long()
    counts = torch.bincount(index, minlength=bins)
    conf_sum = torch.bincount(index, weights=confidence, minlength=bins)
    acc_sum = torch.bincount(index, weights=correct, minlength=bins)
    return [Bin(b / bins, (b + 1) / bins, int(counts[b]), float(conf_sum[b] / counts[b]) if counts[b] else 0.0,
                float(acc_sum[b] / counts[b]) if counts[b] else 0.0) for b in range(bins)]


def _equal_mass_bins(confidence: torch.Tensor, correct: torch.Tensor, bins: int) -> list[Bin]:
    ranked, order = torch.sort(confidence, stable=True)
    hits = correct[order]
    result = []
    for run in torch.arange(len(ranked)).tensor_split(bins):
        if len(run):
            values = ranked[run]
            result.append(Bin(float(values[0]), float(values[-1]), len(run), float(values.mean()),
                              float(hits[run].mean())))
    return result


def ece_of_bins(table: Sequence[Bin]) -> float:
    total = sum(b.count for b in table)
    return sum(b.count / total * abs(b.accuracy - b.confidence) for b in table)


def expected_calibration_error(confidence: torch.Tensor, correct: torch.Tensor, bins: int = 15,
                               binning: Binning = "width") -> float:
    return ece_of_bins(reliability_bins(confidence, correct, bins, binning))


def confidence_and_correct(scores: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Top softmax probability and whether the argmax is the target, per image."""
    probabilities = torch.softmax(scores.double(), dim=1)
    confidence, prediction = probabilities.max(dim=1)
    return confidence, prediction.cpu() == targets.cpu()


def fit_temperature(scores: torch.Tensor, targets: torch.Tensor, *, tolerance: float = 1e-7) -> float:
    """The ``T`` in :data:`TEMPERATURE_RANGE` minimising the mean NLL of ``softmax(scores / T)``.

    The NLL is convex in ``b = 1/T`` (a log-sum-exp of linear functions minus a linear one)
    and its slope is ``mean(E_p[s] - s_target)``, its curvature ``mean(Var_p[s])``: Newton
    steps on ``b``, kept inside a bracket that the slope's sign narrows (a geometric
    bisection when a step leaves it), reach the minimum in a few passes over the scores.
    Float64, no randomness; stops when a step moves ``b`` by less than ``tolerance`` of it."""
    scores = scores.double()
    target_scores = scores.gather(1, targets.long().to(scores.device).view(-1, 1)).squeeze(1)
    low, high = 1.0 / TEMPERATURE_RANGE[1], 1.0 / TEMPERATURE_RANGE[0]
    inverse = 1.0
    for _ in range(200):
        probabilities = torch.softmax(scores * inverse, dim=1)
        weighted = probabilities * scores
        mean = weighted.sum(dim=1)
        slope = float((mean - target_scores).mean())
        curvature = float(((weighted * scores).sum(dim=1) - mean.square()).mean())
        if slope == 0 and curvature > 0:
            break  # the minimum itself (a saturated softmax, flat at zero, is not: it wants a lower T)
        if slope > 0:
            high = inverse
        else:
            low = inverse
        step = inverse - slope / curvature if curvature > 0 else math.nan
        following = step if low < step < high else math.sqrt(low * high)
        if abs(following - inverse) <= tolerance * inverse or high <= low * (1.0 + tolerance):
            inverse = following
            break
        inverse = following
    return 1.0 / inverse


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
    binning: Binning | list[Binning],
    temperature: bool,
) -> dict[str, Any]:
    """Analysis ``calibration``: ECE and reliability diagrams (``bins`` bins) of the zero-shot
    model, every ingredient, every soup and every ensemble on ``datasets`` (default: every
    evaluation set but held-out); WiSE-FT's interpolations only with ``wise_ft``.

    ``binning``: one convention or a list (``width``, ``mass``), each reported; the first
    is the one drawn. ``temperature``: also the ECE after dividing each model's scores by
    the temperature fitted on held-out (which must then be in the suite)."""
    conventions = _conventions(ctx.name, binning)
    names = datasets if datasets is not None else [d for d in ctx.suite.names if d != HELD_OUT]
    ctx.suite.datasets_for(names)
    if temperature and HELD_OUT not in ctx.suite.names:
        raise ConfigError(f"analysis {ctx.name}: temperature scaling fits T on {HELD_OUT}, which is not in "
                          f"eval.datasets {ctx.suite.names}; add it, or set analyses.{ctx.name}.temperature=false")
    drawn = conventions[0]
    rows, curves = [], []
    for calibrated in _models(ctx, wise_ft):
        fitted = _fit(ctx, calibrated) if temperature else None
        for dataset in names:
            scores = _scores(ctx, calibrated, dataset)
            targets = ctx.suite.evaluator.dataset(dataset).targets
            confidence, correct = confidence_and_correct(scores, targets)
            tables = {c: reliability_bins(confidence, correct, bins, c) for c in conventions}
            base = {"model": calibrated.name, "kind": calibrated.kind, "recipe": calibrated.recipe,
                    "label": calibrated.label, "dataset": dataset}
            row: dict[str, Any] = {**base, "accuracy": float(correct.double().mean()),
                                   "confidence": float(confidence.mean()), "binning": drawn,
                                   "ece": ece_of_bins(tables[drawn])}
            row |= {f"ece_{c}": ece_of_bins(tables[c]) for c in conventions}
            if fitted is not None:
                scaled, _ = confidence_and_correct(scores.double() / fitted, targets)
                scaled_eces = {c: expected_calibration_error(scaled, correct, bins, c) for c in conventions}
                row |= {"temperature": fitted, "confidence_scaled": float(scaled.mean()),
                        "ece_scaled": scaled_eces[drawn]}
                row |= {f"ece_{c}_scaled": ece for c, ece in scaled_eces.items()}
            rows.append(row)
            if calibrated.curve:
                curves += [{**base, "binning": drawn, "bin_low": b.low, "bin_high": b.high, "count": b.count,
                            "confidence": b.confidence, "accuracy": b.accuracy} for b in tables[drawn]]
    from soup_exp.reporting.analysis_figures import plot_ece, plot_reliability

    keys = ["ece", *(f"ece_{c}" for c in conventions)]
    if temperature:
        keys += ["ece_scaled", *(f"ece_{c}_scaled" for c in conventions)]
    columns = ["model", "kind", "recipe", "dataset", "accuracy", "confidence", "binning",
               *(["temperature", "confidence_scaled"] if temperature else []), *keys]
    ylabel = f"ECE, equal-{drawn} bins (%)"
    ctx.store.register(plot_ece(rows, names, ctx.store.out("calibration_ece"), columns=columns, ylabel=ylabel))
    ctx.store.register(plot_reliability(curves, names, ctx.store.out("reliability")))
    numbers: dict[str, Any] = {"bins": bins, "binning": conventions, "datasets": names}
    if temperature:
        numbers["temperature"] = {row["model"]: row["temperature"] for row in rows}
    for key in keys:
        by_model: dict[str, dict[str, float]] = {}
        for row in rows:
            by_model.setdefault(row["model"], {})[row["dataset"]] = row[key]
        numbers[key] = by_model
    return numbers


def _conventions(analysis: str, binning: Binning | list[Binning]) -> list[Binning]:
    chosen = [binning] if isinstance(binning, str) else list(dict.fromkeys(binning))
    if not chosen:
        raise ConfigError(f"analysis {analysis}: binning is empty; expected width, mass or [width, mass]")
    return chosen


def _scores(ctx: AnalysisContext, calibrated: Calibrated, dataset: str) -> torch.Tensor:
    """The per-target scores the model predicts from (an ensemble's averaged ones)."""
    if calibrated.model is not None:
        return ctx.suite.target_scores(calibrated.model, dataset)
    return ctx.suite.ensemble_scores(list(calibrated.members), dataset)


def _fit(ctx: AnalysisContext, calibrated: Calibrated) -> float:
    fitted = fit_temperature(_scores(ctx, calibrated, HELD_OUT), ctx.suite.evaluator.dataset(HELD_OUT).targets)
    low, high = TEMPERATURE_RANGE
    if fitted < low * 1.01 or fitted > high / 1.01:
        log.warning("analysis %s: %s's temperature on %s is at the edge of the search range [%g, %g] (T = %.4g): "
                    "its held-out NLL still falls beyond it", ctx.name, calibrated.name, HELD_OUT, low, high, fitted)
    return fitted


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
