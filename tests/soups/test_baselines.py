from __future__ import annotations

import torch

from soup_exp.soups import greedy_ensemble, logit_ensemble, model_stock_soup, wise_ft_soups


def test_wise_ft_endpoints_and_midpoint(make_sd):
    zs, ft = make_sd(0), make_sd(1)
    out = dict(wise_ft_soups(ft, zs, [0.0, 0.25, 1.0]))
    for k in zs:
        torch.testing.assert_close(out[0.0][k], zs[k])
        torch.testing.assert_close(out[1.0][k], ft[k])
        torch.testing.assert_close(out[0.25][k], 0.75 * zs[k] + 0.25 * ft[k])


def test_model_stock_matches_formula(make_sd):
    w0 = make_sd(0)
    shared = make_sd(5)  # a common fine-tuning direction: positive cosines, as in practice
    fts = [{k: v + shared[k] + 0.7 * make_sd(10 + i)[k] for k, v in w0.items()} for i in range(3)]
    result = model_stock_soup(fts, w0)
    for k in w0:
        d = [ft[k].double().flatten() - w0[k].double().flatten() for ft in fts]
        cos = [torch.dot(d[i], d[j]) / (d[i].norm() * d[j].norm()) for i in range(3) for j in range(i + 1, 3)]
        c = float(sum(cos) / len(cos))
        t = 3 * c / (1 + 2 * c)
        expected = t * torch.stack([ft[k].double() for ft in fts]).mean(0) + (1 - t) * w0[k].double()
        assert 0 < t < 1 and abs(result.ratios[k] - t) < 1e-5
        torch.testing.assert_close(result.state_dict[k].double(), expected, atol=1e-5, rtol=0)


def test_model_stock_single_ingredient_is_itself(make_sd):
    w0, ft = make_sd(0), make_sd(1)
    result = model_stock_soup([ft], w0)
    for k in ft:
        torch.testing.assert_close(result.state_dict[k], ft[k])


def _logits_pool(n=6, rows=40, classes=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (rows,), generator=g)
    signal = torch.nn.functional.one_hot(y, classes).float()
    logits = [signal * (0.5 + i * 0.2) + torch.randn(rows, classes, generator=g) for i in range(n)]
    accuracy = lambda lg: (lg.argmax(1) == y).float().mean().item()  # noqa: E731
    return logits, accuracy


def test_logit_ensemble_is_mean_of_logits():
    logits, accuracy = _logits_pool()
    result = logit_ensemble(len(logits), logits.__getitem__, accuracy)
    assert result.members == list(range(len(logits)))
    assert result.accuracy == accuracy(torch.stack(logits).mean(0))


def test_greedy_ensemble_rule():
    logits, accuracy = _logits_pool(seed=3)
    names = [f"m{i}" for i in range(len(logits))]
    scores = [accuracy(lg) for lg in logits]
    result = greedy_ensemble(names, scores, logits.__getitem__, accuracy)
    order = sorted(range(len(logits)), key=lambda i: (-scores[i], names[i]))
    chosen, best = [order[0]], scores[order[0]]
    for i in order[1:]:
        acc = accuracy(torch.stack([logits[j] for j in [*chosen, i]]).mean(0))
        if acc > best:
            chosen, best = [*chosen, i], acc
    assert result.members == chosen
    assert abs(result.accuracy - best) < 1e-9
    assert result.accuracy >= max(scores)
