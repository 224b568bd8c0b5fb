"""Greedy soup: the greedy rule (:mod:`soup_exp.soups.greedy_rule`) over weights.

Memory is one running model plus
one candidate soup. With ``arithmetic="sum"`` the running model is an fp32 (or fp64) sum
and an accepted candidate is re-read (from the page cache) into it; with ``"authors"`` it
is the authors' running average and the accepted candidate is copied into it. The state
(position, chosen, history) is saved atomically after every candidate; the running model
is rebuilt from the chosen ingredients on resume, so no weights need to be saved.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import torch

from soup_exp.artifacts import ArtifactError, read_record
from soup_exp.soups.context import SoupContext
from soup_exp.soups.greedy_rule import candidate_order, run_greedy_rule
from soup_exp.soups.ingredients import (
    IngredientError,
    LazyWeights,
    WeightsLike,
    float_keys,
    held_out_score,
    load_ingredients,
)
from soup_exp.soups.recipe import Range, Soup
from soup_exp.soups.streaming import (
    arithmetic_dtype,
    average_step,
    check_arithmetic,
    finalize,
    running_average,
    weighted_sum,
)
from soup_exp.utils.hashing import stable_hash
from soup_exp.utils.io import atomic_write_json

log = logging.getLogger(__name__)

Evaluate = Callable[[dict[str, torch.Tensor]], float]


@dataclass
class GreedyResult:
    state_dict: dict[str, torch.Tensor] | None
    chosen: list[int]  # ingredient indices in the order added
    history: list[dict[str, Any]]  # one entry per candidate, the starting model first
    accuracy: float  # held-out accuracy of the final soup
    names: list[str] = field(default_factory=list)

    @property
    def chosen_names(self) -> list[str]:
        return [self.names[i] for i in self.chosen]


def held_out_scores_for(
    ingredients: Sequence[LazyWeights],
    held_out_scores: Sequence[float] | Mapping[str, float] | None,
    evaluate: Evaluate | None,
    *,
    precision: str | None = None,
) -> list[float]:
    """Scores given, else from ``ingredient.json``, else evaluated (one model at a time).

    With ``precision`` (the numerics ``evaluate`` runs at), a recorded accuracy measured at
    other or unknown numerics is re-evaluated instead of used."""
    def measure(ing: LazyWeights) -> float:
        return evaluate(ing.state_dict())

    scores: list[float] = []
    for index, ing in enumerate(ingredients):
        if isinstance(held_out_scores, Mapping):
            value = held_out_scores.get(ing.name)
        elif held_out_scores is not None:
            value = held_out_scores[index]
        else:
            value = None
        if value is None:
            value = held_out_score(ing, measure if evaluate is not None else None, precision=precision)
        scores.append(float(value))
    if held_out_scores is not None and not isinstance(held_out_scores, Mapping) \
            and len(held_out_scores) != len(ingredients):
        raise IngredientError(f"{len(held_out_scores)} held-out scores for {len(ingredients)} ingredients")
    return scores


def greedy_soup(
    ingredients: WeightsLike | Iterable[WeightsLike],
    held_out_scores: Sequence[float] | Mapping[str, float] | None,
    evaluate: Evaluate,
    *,
    tolerance: float = 0.0,
    state_file: str | Path | None = None,
    accumulate_dtype: torch.dtype = torch.float32,
    candidate_buffer: Mapping[str, torch.Tensor] | None = None,
    progress: bool = False,
    arithmetic: str = "authors",
    precision: str | None = None,
    order: Sequence[int] | None = None,
) -> GreedyResult:
    """The paper's greedy soup; ``evaluate(state_dict) -> held-out accuracy``.

    Candidates are written into ``candidate_buffer`` (allocated once if not given). Pass
    the evaluation skeleton's ``state_dict()`` and the candidate *is* the model: loading
    it into the skeleton then copies nothing, and memory is the running model plus one model.

    ``arithmetic`` defaults to the CLI's ``soup.arithmetic`` (``authors``), so both cook the
    same soup. ``"sum"`` keeps a sum in ``accumulate_dtype`` and divides each candidate;
    ``"authors"`` keeps the authors' running average (``avg * (n / (n + 1.)) + new * (1. /
    (n + 1))`` in the ingredients' dtype), which reproduces their greedy soup bit for bit.

    ``precision`` is the numerics ``evaluate`` runs at (``fp32``/``bf16``): an ingredient
    whose recorded held-out accuracy was measured at other numerics is re-scored first, so
    that candidates and ingredients are compared alike.

    ``order`` tries the candidates in another order than the paper's (best held-out
    first), e.g. a random one for ablations; its first ingredient starts the soup.

    With ``state_file`` the run resumes after preemption where it stopped (the file is
    bound to the ingredient names, scores, tolerance, arithmetic and order; a different
    pool starts afresh).
    """
    ings = load_ingredients(ingredients)
    names = [ing.name for ing in ings]
    scores = held_out_scores_for(ings, held_out_scores, evaluate, precision=precision)
    averaging = check_arithmetic(arithmetic) == "authors"
    identity = {"names": names, "scores": scores, "tolerance": tolerance}
    if averaging:
        identity["arithmetic"] = arithmetic
    if order is not None:
        order = candidate_order(names, scores, order)
        identity["order"] = order
    fingerprint = stable_hash(identity)
    state = _load_state(state_file, fingerprint, len(ings))
    running: dict[str, torch.Tensor] = {}
    count = [0]  # ingredients in the running model
    floats = set(float_keys(ings[0]))

    def rebuild(chosen: list[int]) -> None:
        running.clear()
        count[0] = len(chosen)
        members = [ings[i] for i in chosen]
        if averaging:
            dtype = arithmetic_dtype(ings[0].spec(next(iter(floats)))[0])
            running.update(running_average(members, dtype=dtype, desc="greedy soup: resume"))
        else:
            running.update(weighted_sum(members, [1.0] * len(chosen), accumulate_dtype=accumulate_dtype,
                                        desc="greedy soup: resume"))

    buffer: dict[str, torch.Tensor] = dict(candidate_buffer) if candidate_buffer is not None else {}

    def candidate_soup(i: int, count: int) -> dict[str, torch.Tensor]:
        """The soup with ingredient ``i`` added, written into the reused buffer."""
        for key, tensor in ings[i].tensors():
            base = running[key]
            if key not in buffer:
                buffer[key] = torch.empty_like(tensor)
            target = buffer[key]
            if key not in floats:
                target.copy_(base)
            elif averaging:
                _write(target, average_step(base, tensor, count, out=_scratch(target, base)))
            elif target.device == base.device and target.dtype == base.dtype:
                torch.add(base, tensor, out=target).div_(count + 1)
            else:
                target.copy_(base.add(tensor).div_(count + 1))
        return buffer

    def try_candidate(i: int) -> float:
        return float(evaluate(candidate_soup(i, count[0])))

    def accept(i: int) -> None:
        if averaging:  # the candidate just scored is the new average: copy, do not recompute
            for key in floats:
                running[key].copy_(buffer[key])
        else:
            for key, tensor in ings[i].tensors():
                if key in floats:
                    running[key].add_(tensor)
        count[0] += 1

    def save(s: dict[str, Any]) -> None:
        if state_file is not None:
            atomic_write_json(state_file, {**s, "fingerprint": fingerprint, "names": names})

    if state is None:
        rebuild([candidate_order(names, scores, order)[0]])
    else:
        log.info("resuming greedy soup from %s: %d/%d candidates done, %d kept",
                 state_file, state["position"], len(ings), len(state["chosen"]))
        rebuild(state["chosen"])
    final = run_greedy_rule(names, scores, try_candidate, accept, tolerance=tolerance,
                            state=state, save_state=save, progress=progress,
                            desc="greedy soup", order=order)
    soup = finalize(running, 1.0 if averaging else 1.0 / len(final["chosen"]), ings[0])
    return GreedyResult(soup, list(final["chosen"]), final["history"], float(final["best"]), names)


def _scratch(target: torch.Tensor, base: torch.Tensor) -> torch.Tensor | None:
    """Where the candidate can be computed in place: ``target`` when it matches ``base``."""
    return target if (target.device, target.dtype) == (base.device, base.dtype) else None


def _write(target: torch.Tensor, value: torch.Tensor) -> None:
    if value is not target:
        target.copy_(value)


def _load_state(state_file: str | Path | None, fingerprint: str, size: int) -> dict[str, Any] | None:
    """The saved progress of this pool's greedy soup, None to start afresh; a damaged file
    is an error naming it (deleting it restarts the soup)."""
    if state_file is None or not Path(state_file).is_file():
        return None
    state = read_record(Path(state_file))
    if state.get("fingerprint") != fingerprint:
        log.warning("%s belongs to another ingredient pool or tolerance: starting afresh", state_file)
        return None
    position, chosen, best, history = (state.get(k) for k in ("position", "chosen", "best", "history"))
    valid = (_is_int(position) and 1 <= position <= size and isinstance(chosen, list) and chosen
             and all(_is_int(i) and 0 <= i < size for i in chosen) and isinstance(best, int | float)
             and not isinstance(best, bool) and isinstance(history, list))
    if not valid:
        raise ArtifactError(f"{state_file}: not a greedy soup state (expected position, chosen, best and "
                            "history of this pool); delete it to restart the greedy soup")
    return {"position": position, "chosen": chosen, "best": float(best), "history": history}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def greedy_recipe(ctx: SoupContext, *, tolerance: Annotated[float, Range(0.0)]) -> Soup:
    """Recipe ``greedy``: the paper's greedy soup, resumable after every candidate."""
    result = greedy_soup(ctx.pool.ingredients, ctx.pool.scores, ctx.judge.evaluate, tolerance=tolerance,
                         state_file=ctx.store.state_file(), accumulate_dtype=ctx.accumulate_dtype,
                         candidate_buffer=ctx.judge.candidate_buffer(), progress=ctx.progress,
                         arithmetic=ctx.arithmetic)
    ctx.log_table("history", result.history)
    k = len(result.chosen)
    return Soup(result.state_dict, {"pool": ctx.pool.names}, ingredients=result.chosen_names,
                coefficients=[1.0 / k] * k, history=result.history, held_out_accuracy=result.accuracy)
