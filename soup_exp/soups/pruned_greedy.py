"""Pruned greedy soup: the greedy soup, then passes that remove (and re-add) ingredients.

After *Pruned Soup* (Dansereau, Sobral, Bhogal, Zalai, "Model soups to increase inference
without increasing compute time", arXiv 2301.10092; reference code
``milo-sobral/ModelSoup``, ``make_soup(method=PRUNED)``): a soup is pruned like a decision
tree, one ingredient at a time, keeping a removal when the held-out accuracy of the soup
without it is better. The reference starts from the uniform soup and only removes
(``start: uniform`` here, with ``try_adding: false``); this recipe starts, by default, from
the paper's greedy soup (:mod:`.greedy`, its order, rule and resume) and each pass also
tries adding back each ingredient left out. A pass tries removing each kept ingredient,
worst held-out first (the reference walks its list reversed), then adding each ingredient
left out at the pass's start, best first; a change is kept when held-out accuracy rises by
more than ``tolerance`` (the greedy rule's strict improvement; the reference keeps ties
and never tries removing its best model).
It stops after a pass that changes nothing, or after ``max_passes``.

Memory is the members' sum (``soup.accumulate_dtype``) plus one candidate, written into
the judge's buffer: ``(sum - x_i) / (k - 1)`` or ``(sum + x_j) / (k + 1)``; each try reads
one ingredient. An accepted change re-sums the members (k reads, in greedy order), so the
sum never drifts by subtracting and is the same after a resume. The state (the pass's
plan and position, the members, the history) is saved atomically after every try, so no
weights are saved.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import torch

from soup_exp.artifacts import ArtifactError, read_record
from soup_exp.soups.context import SoupContext
from soup_exp.soups.greedy import Evaluate, greedy_soup, held_out_scores_for
from soup_exp.soups.greedy_rule import greedy_order
from soup_exp.soups.ingredients import WeightsLike, float_keys, load_ingredients
from soup_exp.soups.recipe import Range, Soup
from soup_exp.soups.streaming import finalize, weighted_sum
from soup_exp.utils.hashing import stable_hash
from soup_exp.utils.io import atomic_write_json

log = logging.getLogger(__name__)

Start = Literal["greedy", "uniform"]


@dataclass
class PrunedResult:
    state_dict: dict[str, torch.Tensor]
    chosen: list[int]  # ingredient indices kept, in greedy order
    history: list[dict[str, Any]]  # the greedy soup's candidates, then each pass's tries
    accuracy: float
    passes: int  # pruning passes run
    names: list[str]

    @property
    def chosen_names(self) -> list[str]:
        return [self.names[i] for i in self.chosen]


def pruned_greedy_soup(
    ingredients: WeightsLike | Iterable[WeightsLike],
    held_out_scores: Sequence[float] | Mapping[str, float] | None,
    evaluate: Evaluate,
    *,
    max_passes: int = 1,
    tolerance: float = 0.0,
    start: Start = "greedy",
    try_adding: bool = True,
    state_file: str | Path | None = None,
    accumulate_dtype: torch.dtype = torch.float32,
    candidate_buffer: Mapping[str, torch.Tensor] | None = None,
    arithmetic: str = "authors",
    precision: str | None = None,
    progress: bool = False,
) -> PrunedResult:
    """Start (the greedy soup, or the uniform soup of the pool), then prune.

    ``evaluate(state_dict) -> held-out accuracy``. With ``state_file`` the greedy soup
    resumes from ``<state_file stem>.greedy.json`` and the passes from ``state_file``; a
    file saved for another pool or other settings is ignored (the soup starts afresh)."""
    ings = load_ingredients(ingredients)
    names = [ing.name for ing in ings]
    scores = held_out_scores_for(ings, held_out_scores, evaluate, precision=precision)
    order = greedy_order(names, scores)
    fingerprint = stable_hash({"names": names, "scores": scores, "tolerance": tolerance, "start": start,
                               "try_adding": try_adding, "max_passes": max_passes, "arithmetic": arithmetic})
    state_path = Path(state_file) if state_file is not None else None
    state = _load_state(state_path, fingerprint, len(ings))
    if state is None:
        state = _start(ings, names, scores, order, evaluate, start=start, tolerance=tolerance, try_adding=try_adding,
                       state_path=state_path, accumulate_dtype=accumulate_dtype,
                       candidate_buffer=candidate_buffer, arithmetic=arithmetic, progress=progress)
    else:
        log.info("resuming pruned greedy soup from %s: pass %d, %d of its %d tries done, %d kept", state_path,
                 state["pass"] + 1, state["position"], len(state["plan"]), len(state["chosen"]))

    def save() -> None:
        if state_path is not None:
            atomic_write_json(state_path, {**state, "fingerprint": fingerprint, "names": names})

    save()
    floats = set(float_keys(ings[0]))
    total: dict[str, torch.Tensor] = {}

    def rebuild() -> None:
        """The members' sum, in greedy order: the same after a resume as after a change."""
        total.update(weighted_sum([ings[i] for i in state["chosen"]], [1.0] * len(state["chosen"]),
                                  accumulate_dtype=accumulate_dtype, progress=progress, desc="pruned soup: sum"))

    rebuild()
    buffer: dict[str, torch.Tensor] = dict(candidate_buffer) if candidate_buffer is not None else {}

    def candidate(action: str, i: int) -> dict[str, torch.Tensor]:
        k = len(state["chosen"])
        sign, size = (-1.0, k - 1) if action == "remove" else (1.0, k + 1)
        for key, tensor in ings[i].tensors():
            if key not in buffer:
                buffer[key] = torch.empty_like(tensor)
            if key in floats:
                buffer[key].copy_(total[key].add(tensor.to(total[key].device), alpha=sign).div_(size))
            else:
                buffer[key].copy_(total[key])
        return buffer

    def apply(action: str, i: int) -> None:
        if action == "remove":
            state["chosen"].remove(i)
        else:
            state["chosen"].append(i)
            state["chosen"].sort(key=order.index)
        rebuild()

    while state["pass"] < max_passes:
        plan = state["plan"]
        while state["position"] < len(plan):
            action, i = plan[state["position"]]
            if action == "add" or len(state["chosen"]) > 1:
                acc = float(evaluate(candidate(action, i)))
                accepted = acc > state["best"] + tolerance
                if accepted:
                    apply(action, i)
                    state["best"] = acc
                    state["changed"] = True
                state["history"].append({
                    "step": len(state["history"]), "pass": state["pass"] + 1, "action": action, "index": i,
                    "name": names[i], "individual_accuracy": float(scores[i]), "accuracy": acc,
                    "accepted": accepted, "num_ingredients": len(state["chosen"]),
                })
            state["position"] += 1
            save()
        state["pass"] += 1
        if not state["changed"]:
            break
        state.update(plan=_plan(state["chosen"], order, try_adding), position=0, changed=False)
        save()
    k = len(state["chosen"])
    soup = finalize(total, 1.0 / k, ings[0])
    return PrunedResult(soup, list(state["chosen"]), state["history"], float(state["best"]),
                        int(state["pass"]), names)


def _start(ings, names, scores, order, evaluate: Callable, *, start: Start, tolerance: float, try_adding: bool,
           state_path: Path | None, accumulate_dtype: torch.dtype, candidate_buffer, arithmetic: str,
           progress: bool) -> dict[str, Any]:
    """The soup the passes start from, as a fresh state: its members, accuracy and history."""
    if start == "greedy":
        greedy_state = state_path.with_suffix(".greedy.json") if state_path is not None else None
        result = greedy_soup(ings, scores, evaluate, tolerance=tolerance, state_file=greedy_state,
                             accumulate_dtype=accumulate_dtype, candidate_buffer=candidate_buffer,
                             progress=progress, arithmetic=arithmetic)
        chosen = sorted(result.chosen, key=order.index)
        history = [{**entry, "pass": 0, "action": "add"} for entry in result.history]
        best = result.accuracy
    elif start == "uniform":
        chosen = list(order)
        soup = finalize(weighted_sum(ings, [1.0] * len(ings), accumulate_dtype=accumulate_dtype,
                                     progress=progress, desc="pruned soup: uniform start"), 1.0 / len(ings), ings[0])
        best = float(evaluate(soup))
        history = [{"step": 0, "pass": 0, "action": "add", "index": None, "name": "uniform soup",
                    "individual_accuracy": None, "accuracy": best, "accepted": True,
                    "num_ingredients": len(chosen)}]
    else:
        raise ValueError(f"pruned greedy start must be 'greedy' or 'uniform', got {start!r}")
    return {"pass": 0, "position": 0, "plan": _plan(chosen, order, try_adding),
            "chosen": chosen, "best": float(best), "history": history, "changed": False}


def _plan(chosen: Sequence[int], order: Sequence[int], try_adding: bool) -> list[list[Any]]:
    """One pass: remove each member, worst held-out first; then add each non-member, best first."""
    members = set(chosen)
    plan = [["remove", i] for i in reversed(order) if i in members]
    if try_adding:
        plan += [["add", i] for i in order if i not in members]
    return plan


def _load_state(path: Path | None, fingerprint: str, size: int) -> dict[str, Any] | None:
    """The saved passes of this pool's pruned soup, None to start afresh; a damaged file is
    an error naming it (deleting it restarts the soup)."""
    if path is None or not path.is_file():
        return None
    state = read_record(path)
    if state.get("fingerprint") != fingerprint:
        log.warning("%s belongs to another ingredient pool or settings: starting afresh", path)
        return None
    keys = ("pass", "position", "plan", "chosen", "best", "history", "changed")
    if not all(k in state for k in keys):
        raise ArtifactError(f"{path}: not a pruned greedy soup state (expected {', '.join(keys)}); "
                            "delete it to restart the pruned greedy soup")
    chosen, plan = state["chosen"], state["plan"]
    valid = (isinstance(chosen, list) and chosen and all(isinstance(i, int) and 0 <= i < size for i in chosen)
             and isinstance(plan, list) and all(isinstance(p, list) and len(p) == 2 for p in plan)
             and isinstance(state["position"], int) and 0 <= state["position"] <= len(plan))
    if not valid:
        raise ArtifactError(f"{path}: not a pruned greedy soup state of this pool; delete it to restart "
                            "the pruned greedy soup")
    return {k: state[k] for k in keys}


def pruned_greedy_recipe(
    ctx: SoupContext,
    *,
    max_passes: Annotated[int, Range(1)],
    tolerance: Annotated[float, Range(0.0)],
    start: Start,
    try_adding: bool,
) -> Soup:
    """Recipe ``pruned_greedy``: the greedy soup, then pruning passes; resumable after every try."""
    result = pruned_greedy_soup(ctx.pool.ingredients, ctx.pool.scores, ctx.judge.evaluate, max_passes=max_passes,
                                tolerance=tolerance, start=start, try_adding=try_adding,
                                state_file=ctx.store.state_file(), accumulate_dtype=ctx.accumulate_dtype,
                                candidate_buffer=ctx.judge.candidate_buffer(), arithmetic=ctx.arithmetic,
                                progress=ctx.progress)
    if start == "greedy":
        ctx.store.state_file("state.greedy.json")  # removed with the soup's own state once written
    ctx.log_table("history", result.history)
    k = len(result.chosen)
    return Soup(result.state_dict, {"pool": ctx.pool.names, "passes": result.passes},
                ingredients=result.chosen_names, coefficients=[1.0 / k] * k, history=result.history,
                held_out_accuracy=result.accuracy)
