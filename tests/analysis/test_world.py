"""The tiny world trains models that are better than chance, so the analyses have signal."""

from __future__ import annotations


def test_pool_is_better_than_chance(context):
    ctx = context()
    assert ctx.names == ["ft_0", "ft_1", "ft_2", "ft_3", "lp_init"]
    assert all(score > 0.4 for score in ctx.scores), ctx.scores
    accuracies = ctx.accuracies(ctx.ingredients[1], ctx.suite)
    assert set(accuracies) == {*ctx.suite, "avg_shifts"}
    assert ctx.initialisation("auto").name == "lp_init"
    assert ctx.initialisation("zeroshot").name == "zeroshot"
