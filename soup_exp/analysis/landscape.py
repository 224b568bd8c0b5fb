"""The error landscape (paper, Figure 2): held-out error and training loss on the plane
through the initialisation ``θ0`` and two fine-tunes ``θa``, ``θb``.

The plane gets an orthonormal basis (``e1`` along ``θa - θ0``, ``e2`` the part of
``θb - θ0`` orthogonal to it, over all floating tensors), so distances and angles in the
figure are the true ones. A point ``(x, y)`` is ``θ0 + x e1 + y e2``, which is the weighted
sum ``w0 θ0 + wa θa + wb θb`` with ``w0 + wa + wb = 1``: every grid point is streamed from
the three weight files like any soup. The three models and their midpoint soup are
evaluated at their exact coefficients, beside the grid. Finished points are saved after
each one, so an interrupted landscape resumes where it stopped.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Annotated, Any

import torch
from tqdm.auto import tqdm

from soup_exp.analysis.context import AnalysisContext
from soup_exp.errors import ConfigError
from soup_exp.soups.ingredients import LazyWeights, float_keys
from soup_exp.soups.streaming import finalize, weighted_sum
from soup_exp.utils.checks import Range

log = logging.getLogger(__name__)


ASPECT = 0.7  # height / width of the landscape's axes


@dataclass(frozen=True)
class Plane:
    """Coordinates of ``θa`` (``(norm_a, 0)``) and ``θb`` (``(xb, yb)``) in the plane's basis."""

    norm_a: float
    xb: float
    yb: float

    @classmethod
    def through(cls, origin: LazyWeights, a: LazyWeights, b: LazyWeights) -> Plane:
        """The basis from one streamed pass over the three models (float64 sums)."""
        uu = uw = ww = 0.0
        for key in float_keys(origin):
            base = origin.get(key).to(torch.float64)
            u = a.get(key).to(torch.float64) - base
            w = b.get(key).to(torch.float64) - base
            uu += float((u * u).sum())
            uw += float((u * w).sum())
            ww += float((w * w).sum())
        if uu == 0 or ww == 0:
            raise ConfigError(f"landscape: {a.name if uu == 0 else b.name} equals the origin {origin.name}; "
                              "choose two models that moved away from it")
        norm_a = math.sqrt(uu)
        xb = uw / norm_a
        yb = math.sqrt(max(ww - xb * xb, 0.0))
        if yb <= 1e-6 * math.sqrt(ww):  # float64 cancellation leaves ~1e-8 of a collinear pair
            raise ConfigError(f"landscape: {a.name} and {b.name} lie on one line through {origin.name}; "
                              "they span no plane")
        return cls(norm_a, xb, yb)

    def weights(self, x: float, y: float) -> tuple[float, float, float]:
        """``(w0, wa, wb)`` with ``θ0 + x e1 + y e2 = w0 θ0 + wa θa + wb θb``."""
        wb = y / self.yb
        wa = (x - wb * self.xb) / self.norm_a
        return 1.0 - wa - wb, wa, wb

    def position(self, w0: float, wa: float, wb: float) -> tuple[float, float]:
        return wa * self.norm_a + wb * self.xb, wb * self.yb

    def grid(self, size: int, margin: float, aspect: float = ASPECT) -> list[tuple[float, float]]:
        """``size x size`` points, row-major (x fastest), covering the three models plus
        ``margin`` of their span, the shorter side widened to at least ``aspect`` of the
        longer so that the figure, drawn to scale, is filled."""
        x0, x1 = _padded((0.0, self.norm_a, self.xb), margin)
        y0, y1 = _padded((0.0, 0.0, self.yb), margin)
        (x0, x1), (y0, y1) = _widened(x0, x1, (y1 - y0) / aspect), _widened(y0, y1, aspect * (x1 - x0))
        return [(_step(x0, x1, size, i), _step(y0, y1, size, j)) for j in range(size) for i in range(size)]


def _padded(values: tuple[float, ...], margin: float) -> tuple[float, float]:
    pad = margin * (max(values) - min(values))
    return min(values) - pad, max(values) + pad


def _widened(low: float, high: float, span: float) -> tuple[float, float]:
    """``[low, high]`` widened about its centre to at least ``span``."""
    grow = max(0.0, span - (high - low)) / 2
    return low - grow, high + grow


def _step(low: float, high: float, size: int, index: int) -> float:
    return low + (high - low) * index / (size - 1)


MARKED = (("origin", (1.0, 0.0, 0.0)), ("model_a", (0.0, 1.0, 0.0)), ("model_b", (0.0, 0.0, 1.0)),
          ("midpoint", (0.0, 0.5, 0.5)))


def landscape_analysis(
    ctx: AnalysisContext,
    *,
    origin: str,
    models: list[str] | None,
    grid: Annotated[int, Range(2)],
    margin: Annotated[float, Range(0.0)],
    error_on: str,
    train_images: Annotated[int, Range(1)],
    seed: int,
) -> dict[str, Any]:
    """Analysis ``landscape``: error on ``error_on`` (held-out by default) and loss on
    ``train_images`` training images (drawn with ``seed``) on a ``grid`` x ``grid`` grid
    over the plane through ``origin`` and ``models`` (two names; default: the two best
    ingredients on held-out besides the origin)."""
    zero = ctx.pool.initialisation(origin)
    pair = _pair(ctx, zero, models)
    if pair is None:
        log.warning("landscape: the pool has fewer than two fine-tuned models besides %s; nothing to draw "
                    "(name two models with analyses.landscape.models=[a,b])", zero.name)
        return {"models": []}
    a, b = pair
    plane = Plane.through(zero, a, b)
    train_evaluator, train_set = ctx.suite.train_subset(train_images, seed)
    ctx.suite.datasets_for([error_on])
    done = ctx.store.partial()
    points = [(f"grid_{i}", plane.weights(x, y), (x, y)) for i, (x, y) in enumerate(plane.grid(grid, margin))]
    points += [(role, weights, plane.position(*weights)) for role, weights in MARKED]
    trio = [zero, a, b]
    for key, weights, _ in tqdm([p for p in points if p[0] not in done], desc="landscape", unit="point",
                                disable=not ctx.progress, leave=False):
        state_dict = finalize(weighted_sum(trio, list(weights), accumulate_dtype=ctx.accumulate_dtype), 1.0, zero)
        done[key] = _metrics(ctx, state_dict, error_on, train_evaluator, train_set)
        ctx.store.save_partial(done)

    names = {"origin": zero, "model_a": a, "model_b": b}
    rows = []
    for key, (w0, wa, wb), (x, y) in points:
        role = key if not key.startswith("grid_") else "grid"
        model = names.get(role)
        rows.append({"role": role, "name": model.name if model else ("midpoint soup" if role == "midpoint" else ""),
                     "kind": (model.info.get("kind") if model else None), "x": x, "y": y,
                     "w_origin": w0, "w_a": wa, "w_b": wb, **done[key]})
    grid_rows = [r for r in rows if r["role"] == "grid"]
    marked = [r for r in rows if r["role"] != "grid"]
    from soup_exp.reporting.analysis_figures import metric_label, plot_landscape

    ctx.store.register(plot_landscape(grid_rows, marked, "error", f"{metric_label(error_on)} error (%)",
                                ctx.store.out("landscape_error"), percent=True))
    ctx.store.register(plot_landscape(grid_rows, marked, "train_loss", f"Training loss ({train_images} images)",
                                ctx.store.out("landscape_train_loss")))
    by_role = {r["role"]: r for r in marked}
    endpoints = (by_role["model_a"]["error"] + by_role["model_b"]["error"]) / 2
    return {
        "origin": zero.name, "models": [a.name, b.name], "error_on": error_on, "train_images": train_images,
        "angle_deg": math.degrees(math.atan2(plane.yb, plane.xb)),
        **{f"{role}_{k}": by_role[role][k] for role, _ in MARKED for k in ("error", "loss", "train_loss")},
        "midpoint_error_gain": endpoints - by_role["midpoint"]["error"],
        "grid_min_error": min(r["error"] for r in grid_rows),
    }


def _pair(ctx: AnalysisContext, origin: LazyWeights, models: list[str] | None) -> tuple[LazyWeights, LazyWeights] | None:
    """The two named models, else the two best fine-tunes on held-out (None: fewer than two)."""
    if models is not None:
        if len(models) != 2:
            raise ConfigError(f"analyses.landscape.models={models}: name exactly two models (or null for the "
                              "two best on held-out)")
        return ctx.pool.model(models[0]), ctx.pool.model(models[1])
    candidates = sorted((i for i, ing in enumerate(ctx.pool.ingredients)
                         if ing.name != origin.name and ing.info.get("kind") != "lp"), key=lambda i: -ctx.pool.scores[i])
    if len(candidates) < 2:
        return None
    return ctx.pool.ingredients[candidates[0]], ctx.pool.ingredients[candidates[1]]


def _metrics(ctx: AnalysisContext, state_dict: dict[str, torch.Tensor], error_on: str, train_evaluator: Any,
             train_set: str) -> dict[str, float]:
    """Error and loss on ``error_on`` and on the train subset of one point of the plane."""
    test = _error_and_loss(ctx.suite.evaluator, ctx.suite.weights_logits(state_dict, [error_on])[error_on], error_on)
    train = _error_and_loss(train_evaluator, ctx.suite.weights_logits(state_dict, [train_set], train_evaluator)[train_set],
                            train_set)
    return {"error": test[0], "loss": test[1], "train_error": train[0], "train_loss": train[1]}


def _error_and_loss(evaluator: Any, logits: torch.Tensor, dataset: str) -> tuple[float, float]:
    """Top-1 error and mean cross-entropy of raw logits (after the dataset's projection)."""
    scores = evaluator.dataset(dataset).project(logits.float())
    targets = evaluator.dataset(dataset).targets
    error = 1.0 - evaluator.accuracy_from_logits(logits, dataset)
    return error, float(torch.nn.functional.cross_entropy(scores, targets))

