"""The pruned greedy soup on pools where the held-out function is exact (a fake judge)."""

from __future__ import annotations

import json

import pytest
import torch

from soup_exp.soups import greedy_soup
from soup_exp.soups.pruned_greedy import pruned_greedy_soup

# Greedy keeps [a, d, c]; without a, the soup of d and c is better (held-out = -|mean|).
VALUES = {"a": 0.4, "b": -2.9, "c": 1.4, "d": -1.0}


def _pool(values=VALUES):
    return [{"w": torch.tensor([v], dtype=torch.float64), "count": torch.tensor([7])} for v in values.values()]


def _evaluate(sd):
    return -abs(float(sd["w"][0]))


def _scores(values=VALUES):
    return [-abs(v) for v in values.values()]


def test_pruning_removes_an_ingredient_plain_greedy_keeps():
    sds = _pool()
    greedy = greedy_soup(sds, _scores(), _evaluate)
    assert greedy.chosen == [0, 3, 2]  # a kept: it helped when d was the only other member
    pruned = pruned_greedy_soup(sds, _scores(), _evaluate, max_passes=3)
    assert pruned.chosen == [3, 2] and pruned.accuracy > greedy.accuracy
    assert pruned.accuracy == pytest.approx(-0.2)
    torch.testing.assert_close(pruned.state_dict["w"], torch.tensor([0.2], dtype=torch.float64))
    assert torch.equal(pruned.state_dict["count"], torch.tensor([7]))
    assert pruned.passes == 2  # the second pass changed nothing

    tries = [(h["pass"], h["action"], h["name"], h["accepted"]) for h in pruned.history]
    names = [f"state_dict_{i}" for i in range(4)]
    assert tries == [
        (0, "add", names[0], True), (0, "add", names[3], True), (0, "add", names[2], True),
        (0, "add", names[1], False),  # the greedy soup
        (1, "remove", names[2], False), (1, "remove", names[3], False), (1, "remove", names[0], True),
        (1, "add", names[1], False),  # pass 1: the worst member first, then those left out
        (2, "remove", names[2], False), (2, "remove", names[3], False),
        (2, "add", names[0], False), (2, "add", names[1], False),  # pass 2: no change, stop
    ]
    assert [h["step"] for h in pruned.history] == list(range(len(pruned.history)))
    removal = pruned.history[6]
    assert removal["accuracy"] == pytest.approx(-0.2) and removal["num_ingredients"] == 2
    assert removal["individual_accuracy"] == pytest.approx(-0.4)


def test_max_passes_and_adding_off():
    sds = _pool()
    once = pruned_greedy_soup(sds, _scores(), _evaluate, max_passes=1)
    assert once.passes == 1 and len(once.history) == 8 and once.chosen == [3, 2]
    no_adds = pruned_greedy_soup(sds, _scores(), _evaluate, max_passes=3, try_adding=False)
    assert all(h["action"] == "remove" for h in no_adds.history if h["pass"] > 0)


def _reference_pruned_soup(values, scores):
    """The reference code's PRUNED method (milo-sobral/ModelSoup, make_soup): the uniform
    soup, then one pass over the models sorted best first and walked reversed (worst
    first), removing one when the soup without it is better. Two documented differences
    from that code: the best model is tried too (the reference never removes its first
    model), and a tie is no improvement (the greedy rule's; the reference keeps ties)."""
    order = sorted(range(len(values)), key=lambda i: scores[i], reverse=True)
    members = list(order)
    best = -abs(sum(values) / len(values))
    for i in reversed(order):
        rest = [j for j in members if j != i]
        acc = -abs(sum(values[j] for j in rest) / len(rest))
        if acc > best:
            members, best = rest, acc
    return sorted(members), best


@pytest.mark.parametrize("seed", range(6))
def test_uniform_start_without_adding_is_the_reference_pruned_soup(seed):
    g = torch.Generator().manual_seed(seed)
    values = {f"m{i}": float(v) for i, v in enumerate(torch.randn(7, generator=g, dtype=torch.float64) * 2 + 0.3)}
    scores = _scores(values)
    members, best = _reference_pruned_soup(list(values.values()), scores)
    ours = pruned_greedy_soup(_pool(values), scores, _evaluate, start="uniform", try_adding=False, max_passes=1,
                              accumulate_dtype=torch.float64)
    assert sorted(ours.chosen) == members
    assert ours.accuracy == pytest.approx(best)
    assert ours.history[0]["name"] == "uniform soup"


class _Preempted(Exception):
    pass


@pytest.mark.parametrize("stop_after", [2, 6, 9])  # in the greedy soup, in pass 1, in pass 2
def test_resume_after_interruption_gives_the_same_soup_with_fewer_evaluations(tmp_path, stop_after):
    sds = _pool()
    straight_calls = []
    straight = pruned_greedy_soup(sds, _scores(), lambda sd: straight_calls.append(1) or _evaluate(sd),
                                  max_passes=3)
    state = tmp_path / "state.json"
    calls = {"n": 0}

    def flaky(sd):
        calls["n"] += 1
        if calls["n"] > stop_after:
            raise _Preempted
        return _evaluate(sd)

    with pytest.raises(_Preempted):
        pruned_greedy_soup(sds, _scores(), flaky, max_passes=3, state_file=state)
    resumed_calls = []
    resumed = pruned_greedy_soup(sds, _scores(), lambda sd: resumed_calls.append(1) or _evaluate(sd),
                                 max_passes=3, state_file=state)
    assert len(resumed_calls) == len(straight_calls) - stop_after
    assert resumed.chosen == straight.chosen and resumed.history == straight.history
    assert resumed.passes == straight.passes
    torch.testing.assert_close(resumed.state_dict["w"], straight.state_dict["w"])
    if stop_after > 3:
        assert json.loads(state.read_text())["chosen"] == straight.chosen


def test_state_of_other_settings_starts_afresh(tmp_path, caplog):
    sds = _pool()
    state = tmp_path / "state.json"
    pruned_greedy_soup(sds, _scores(), _evaluate, max_passes=1, state_file=state)
    calls = []
    with caplog.at_level("WARNING"):
        pruned_greedy_soup(sds, _scores(), lambda sd: calls.append(1) or _evaluate(sd), max_passes=2,
                           state_file=state)
    assert "belongs to another ingredient pool or settings" in caplog.text
    assert len(calls) == 8  # the finished greedy soup is resumed (its state is its own), two passes redone
