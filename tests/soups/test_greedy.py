from __future__ import annotations

import json

import pytest
import torch

from soup_exp.soups import greedy_soup


def _evaluate(sd):
    """Deterministic, non-monotone accuracy-like score of a state dict."""
    v = torch.cat([t.double().flatten() for t in sd.values()])
    return float(torch.sigmoid(-(v - 0.3).pow(2).mean() + torch.sin(5 * v).mean()))


def _reference_greedy(sds, scores, evaluate):
    """The authors' loop, with full state dicts in memory."""
    order = sorted(range(len(sds)), key=lambda i: scores[i])
    order.reverse()
    chosen, best = [order[0]], scores[order[0]]
    soup = {k: v.clone().double() for k, v in sds[order[0]].items()}
    for i in order[1:]:
        n = len(chosen)
        candidate = {k: soup[k] * (n / (n + 1.0)) + sds[i][k].double() / (n + 1.0) for k in soup}
        acc = evaluate({k: v.float() for k, v in candidate.items()})
        if acc > best:
            chosen.append(i)
            best, soup = acc, candidate
    return chosen, soup


def _pools(make_sd, n, seed):
    g = torch.Generator().manual_seed(seed)
    base = make_sd(100 + seed)
    sds = [{k: v + 0.5 * torch.randn(v.shape, generator=g) for k, v in base.items()} for _ in range(n)]
    return sds, [_evaluate(sd) for sd in sds]


@pytest.mark.parametrize("seed", range(4))
def test_matches_reference(make_sd, seed):
    sds, scores = _pools(make_sd, 8, seed)
    ref_chosen, ref_soup = _reference_greedy(sds, scores, _evaluate)
    result = greedy_soup(sds, scores, _evaluate)
    assert result.chosen == ref_chosen
    for k in ref_soup:
        torch.testing.assert_close(result.state_dict[k].double(), ref_soup[k], atol=1e-6, rtol=0)
    assert len(result.history) == len(sds)
    assert [h["accepted"] for h in result.history].count(True) == len(ref_chosen)
    assert result.accuracy >= max(scores)


def test_ties_later_first_and_tolerance(make_sd):
    sds = [make_sd(i) for i in range(3)]
    result = greedy_soup(sds, [0.5, 0.5, 0.5], lambda sd: 0.5)
    assert result.chosen == [2]  # the authors' order: later first; equal accuracy is no improvement
    assert [h["index"] for h in result.history] == [2, 1, 0]
    accs = iter([0.55, 0.7])
    result = greedy_soup(sds, [0.5, 0.4, 0.3], lambda sd: next(accs), tolerance=0.1)
    assert result.chosen == [0, 2]


def test_scores_from_metadata_or_evaluated(tmp_path, make_sd, make_run):
    sds, scores = _pools(make_sd, 4, 7)
    for i, sd in enumerate(sds):
        extra = {"held_out_accuracy": scores[i]} if i % 2 == 0 else {}
        make_run(tmp_path, f"m{i}", sd, **extra)
    result = greedy_soup(tmp_path, None, _evaluate)
    ref_chosen, _ = _reference_greedy(sds, scores, _evaluate)
    assert result.chosen == ref_chosen


class _Preempted(Exception):
    pass


@pytest.mark.parametrize("arithmetic", ["sum", "authors"])
def test_resume_after_interruption(tmp_path, make_sd, arithmetic):
    sds, scores = _pools(make_sd, 8, 3)
    expected = greedy_soup(sds, scores, _evaluate, arithmetic=arithmetic)
    state = tmp_path / "greedy_state.json"
    calls = {"n": 0}

    def flaky(sd):
        calls["n"] += 1
        if calls["n"] == 4:
            raise _Preempted
        return _evaluate(sd)

    with pytest.raises(_Preempted):
        greedy_soup(sds, scores, flaky, state_file=state, arithmetic=arithmetic)
    saved = json.loads(state.read_text())
    assert saved["position"] == 4
    seen = []

    def counting(sd):
        seen.append(1)
        return _evaluate(sd)

    resumed = greedy_soup(sds, scores, counting, state_file=state, arithmetic=arithmetic)
    assert len(seen) == len(sds) - saved["position"]
    assert resumed.chosen == expected.chosen and len(expected.chosen) > 1
    assert resumed.history == expected.history
    for k in expected.state_dict:
        if arithmetic == "authors":  # the running average is replayed exactly
            assert torch.equal(resumed.state_dict[k], expected.state_dict[k])
        else:
            torch.testing.assert_close(resumed.state_dict[k], expected.state_dict[k])


def test_candidate_written_into_skeleton(make_sd):
    """With the skeleton's own state dict as buffer, evaluation loads nothing new."""
    sds, scores = _pools(make_sd, 6, 11)

    class Skeleton(torch.nn.Module):
        def __init__(self):
            super().__init__()
            for k, v in sds[0].items():
                self.register_parameter(k.replace(".", "_"), torch.nn.Parameter(torch.zeros_like(v)))

    skeleton = Skeleton()
    own = skeleton.state_dict()
    buffer = {k: own[k.replace(".", "_")] for k in sds[0]}

    def evaluate(sd):
        assert all(sd[k].data_ptr() == buffer[k].data_ptr() for k in sd)
        return _evaluate({k: getattr(skeleton, k.replace(".", "_")).detach() for k in sd})

    shared = greedy_soup(sds, scores, evaluate, candidate_buffer=buffer)
    plain = greedy_soup(sds, scores, _evaluate)
    assert shared.chosen == plain.chosen
    for k in plain.state_dict:
        torch.testing.assert_close(shared.state_dict[k], plain.state_dict[k])


def test_scores_measured_at_other_numerics_are_rescored(tmp_path, make_sd, make_run):
    sds, scores = _pools(make_sd, 4, 5)
    for i, sd in enumerate(sds):
        precision = {0: "fp32", 1: "bf16", 2: None, 3: "fp32"}[i]
        extra = {"held_out_precision": precision} if precision else {}
        make_run(tmp_path, f"m{i}", sd, held_out_accuracy=0.01 * i, **extra)  # recorded, not _evaluate's
    evaluated = []

    def counting(sd):
        evaluated.append(1)
        return _evaluate(sd)

    result = greedy_soup(tmp_path, None, counting, precision="fp32")
    start = {h["index"]: h["individual_accuracy"] for h in result.history}
    assert start[0] == 0.0 and start[3] == 0.03  # fp32 records are used as they are
    assert start[1] == scores[1] and start[2] == scores[2]  # bf16 and unknown ones re-scored
    assert len(evaluated) == 2 + (len(sds) - 1)  # two re-scores, then one per candidate
    plain = greedy_soup(tmp_path, None, _evaluate)  # no precision given: records as they are
    assert {h["index"]: h["individual_accuracy"] for h in plain.history}[1] == 0.01


def test_order_is_the_authors_sort_on_their_results_file():
    """main.py: sorted(dict(row order).items(), key=itemgetter(1)) then reverse()."""
    import operator

    from soup_exp.soups.greedy_rule import greedy_order
    from soup_exp.training.sweep import PACKAGED_HPARAMS

    with open(PACKAGED_HPARAMS.parent / "individual_model_results.jsonl") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    accs = {row["model_name"]: row["ImageNet2p"] for row in rows}
    theirs = sorted(accs.items(), key=operator.itemgetter(1))
    theirs.reverse()
    names = list(accs)
    ours = [names[i] for i in greedy_order(names, [accs[n] for n in names])]
    assert ours == [name for name, _ in theirs]
    assert accs["model_4"] == accs["model_5"] and ours.index("model_5") + 1 == ours.index("model_4")
    assert ours[0] == "model_43"


def test_greedy_ensemble_shares_the_tie_order():
    from soup_exp.soups import greedy_ensemble

    logits = [torch.eye(3)[[0, 1, 2]], torch.eye(3)[[0, 0, 0]], torch.eye(3)[[2, 1, 0]]]
    targets = torch.tensor([0, 1, 2])
    result = greedy_ensemble(["a", "b", "c"], [0.5, 0.9, 0.5], lambda i: logits[i],
                             lambda x: (x.argmax(1) == targets).float().mean().item())
    assert [h["name"] for h in result.history] == ["b", "c", "a"]


def test_authors_arithmetic_is_their_running_average_bit_for_bit(make_sd):
    sds, scores = _pools(make_sd, 8, 2)
    result = greedy_soup(sds, scores, _evaluate, arithmetic="authors")
    order = sorted(range(len(sds)), key=lambda i: scores[i])
    order.reverse()
    soup, chosen, best = dict(sds[order[0]]), [order[0]], scores[order[0]]
    for i in order[1:]:
        n = len(chosen)
        candidate = {k: soup[k].clone() * (n / (n + 1.)) + sds[i][k].clone() * (1. / (n + 1)) for k in sds[i]}
        acc = _evaluate(candidate)
        if acc > best:
            chosen.append(i)
            best, soup = acc, candidate
    assert result.chosen == chosen and len(chosen) > 1
    assert all(torch.equal(result.state_dict[k], soup[k]) for k in soup)
    with pytest.raises(Exception, match="soup arithmetic 'mean'"):
        greedy_soup(sds, scores, _evaluate, arithmetic="mean")
