"""The paper's greedy rule, shared by the greedy soup and the greedy ensemble.

Order the candidates by held-out accuracy (best first; among equal scores the later
ingredient first, as the authors' ascending sort followed by ``reverse()``), start from
the best, and keep each next candidate only if the held-out accuracy of the soup strictly
improves (by more than ``tolerance``). What a "soup" is (averaged weights, summed logits)
is the caller's: the rule sees only scores.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from tqdm.auto import tqdm

from soup_exp.soups.ingredients import IngredientError


def greedy_order(names: Sequence[str], scores: Sequence[float]) -> list[int]:
    """Indices by held-out accuracy, best first, exactly as the authors' ``main.py`` orders
    its results rows: a stable ascending sort, reversed, so among equal scores the later
    ingredient comes first (their ``model_5`` before ``model_4``)."""
    if len(names) != len(scores):
        raise IngredientError(f"{len(scores)} held-out scores for {len(names)} ingredients")
    order = sorted(range(len(names)), key=lambda i: float(scores[i]))
    order.reverse()
    return order


def candidate_order(names: Sequence[str], scores: Sequence[float], order: Sequence[int] | None) -> list[int]:
    """``order`` checked to be a permutation of the ingredients, or the paper's order."""
    if order is None:
        return greedy_order(names, scores)
    order = [int(i) for i in order]
    if sorted(order) != list(range(len(names))):
        raise IngredientError(f"a greedy order must list each of the {len(names)} ingredients once, got {order}")
    return order


def run_greedy_rule(
    names: Sequence[str],
    scores: Sequence[float],
    try_candidate: Callable[[int], float],
    accept: Callable[[int], None],
    *,
    tolerance: float = 0.0,
    state: dict[str, Any] | None = None,
    save_state: Callable[[dict[str, Any]], None] | None = None,
    progress: bool = False,
    desc: str = "greedy",
    order: Sequence[int] | None = None,
) -> dict[str, Any]:
    """The greedy rule over an abstract "soup": ``try_candidate(i)`` scores the current
    members plus ``i``; ``accept(i)`` adds it. Returns the state (chosen, history, best).
    Candidates come in ``order`` (default :func:`greedy_order`, the paper's), the first
    of which starts the soup."""
    order = candidate_order(names, scores, order)
    if state is None:
        first = order[0]
        state = {
            "position": 1,
            "chosen": [first],
            "best": float(scores[first]),
            "history": [{"step": 0, "index": first, "name": names[first],
                         "individual_accuracy": float(scores[first]), "accuracy": float(scores[first]),
                         "accepted": True, "num_ingredients": 1}],
        }
        if save_state:
            save_state(state)
    with tqdm(total=len(order) - 1, initial=state["position"] - 1, desc=desc,
              disable=not progress, leave=False) as bar:
        while state["position"] < len(order):
            i = order[state["position"]]
            acc = float(try_candidate(i))
            accepted = acc > state["best"] + tolerance
            if accepted:
                accept(i)
                state["chosen"].append(i)
                state["best"] = acc
            state["history"].append({
                "step": state["position"], "index": i, "name": names[i],
                "individual_accuracy": float(scores[i]), "accuracy": acc,
                "accepted": accepted, "num_ingredients": len(state["chosen"]),
            })
            state["position"] += 1
            if save_state:
                save_state(state)
            bar.update(1)
            bar.set_postfix(best=f"{state['best']:.4f}", kept=len(state["chosen"]))
    return state
