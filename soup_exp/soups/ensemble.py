"""Output-space baselines: the logit ensemble and the greedy ensemble.

Both work on cached per-ingredient held-out logits (``load_logits(i)``: what an ensemble
averages of member ``i``, :meth:`~soup_exp.evaluation.Evaluator.member_logits`), holding
only a float64 running sum and one candidate, and average them with the evaluate stage's
:func:`~soup_exp.evaluation.evaluator.ensemble_mean`, so a recipe's held-out accuracy is the
one the results row shows. The greedy ensemble uses the very rule of the greedy soup
(:func:`soup_exp.soups.greedy_rule.run_greedy_rule`) with logits in place of weights.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any

import torch

from soup_exp.evaluation.evaluator import ensemble_mean, mean_member_logits
from soup_exp.soups.context import SoupContext
from soup_exp.soups.greedy_rule import greedy_order, run_greedy_rule
from soup_exp.soups.recipe import Range, Soup

LoadLogits = Callable[[int], torch.Tensor]
AccuracyFromLogits = Callable[[torch.Tensor], float]


@dataclass
class EnsembleResult:
    members: list[int]
    accuracy: float
    history: list[dict[str, Any]] = field(default_factory=list)


def logit_ensemble(num_members: int, load_logits: LoadLogits, accuracy: AccuracyFromLogits) -> EnsembleResult:
    """All members, their logits averaged (:func:`mean_member_logits`), scored by ``accuracy``."""
    members = list(range(num_members))
    return EnsembleResult(members, float(accuracy(mean_member_logits(load_logits(i) for i in members))))


def greedy_ensemble(
    names: Sequence[str],
    scores: Sequence[float],
    load_logits: LoadLogits,
    accuracy: AccuracyFromLogits,
    *,
    tolerance: float = 0.0,
    progress: bool = False,
) -> EnsembleResult:
    """The greedy-soup rule applied to logit ensembles."""
    first = greedy_order(names, scores)[0]
    running = {"sum": load_logits(first).double(), "count": 1}

    def try_candidate(i: int) -> float:
        return float(accuracy(ensemble_mean(running["sum"] + load_logits(i), running["count"] + 1)))

    def accept(i: int) -> None:
        running["sum"].add_(load_logits(i))
        running["count"] += 1

    state = run_greedy_rule(names, scores, try_candidate, accept, tolerance=tolerance,
                            progress=progress, desc="greedy ensemble")
    return EnsembleResult(list(state["chosen"]), float(state["best"]), state["history"])


def ensemble_recipe(ctx: SoupContext) -> Soup:
    """Recipe ``ensemble``: every ingredient's logits averaged (N models at inference)."""
    n = len(ctx.pool.ingredients)
    result = logit_ensemble(n, _member_logits(ctx), ctx.judge.ensemble_accuracy)
    return Soup(None, kind="ensemble", members=ctx.pool.names, coefficients=[1.0 / n] * n,
                held_out_accuracy=result.accuracy)


def greedy_ensemble_recipe(ctx: SoupContext, *, tolerance: Annotated[float, Range(0.0)]) -> Soup:
    """Recipe ``greedy_ensemble``: the greedy rule over logit ensembles."""
    result = greedy_ensemble(ctx.pool.names, ctx.pool.scores, _member_logits(ctx), ctx.judge.ensemble_accuracy,
                             tolerance=tolerance, progress=ctx.progress)
    ctx.log_table("history", result.history)
    members = [ctx.pool.names[i] for i in result.members]
    return Soup(None, {"pool": ctx.pool.names}, kind="ensemble", members=members, ingredients=members,
                coefficients=[1.0 / len(members)] * len(members), history=result.history,
                held_out_accuracy=result.accuracy)


def _member_logits(ctx: SoupContext) -> LoadLogits:
    """Ingredient ``index``'s held-out logits as an ensemble averages them."""
    return lambda index: ctx.judge.heldout_member_logits(ctx.pool.ingredients[index])
