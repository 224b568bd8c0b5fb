"""The tiny world trains models that are better than chance, so the analyses have signal."""

from __future__ import annotations


def test_pool_is_better_than_chance(context):
    ctx = context()
    assert ctx.pool.names == ["ft_0", "ft_1", "ft_2", "ft_3", "lp_init"]
    assert all(score > 0.4 for score in ctx.pool.scores), ctx.pool.scores
    accuracies = ctx.suite.accuracies(ctx.pool.ingredients[1], ctx.suite.names)
    assert set(accuracies) == {*ctx.suite.names, "avg_shifts"}
    assert ctx.pool.initialisation("auto").name == "lp_init"
    assert ctx.pool.initialisation("zeroshot").name == "zeroshot"


def test_a_copied_experiment_starts_from_its_own_lp_init(context, world, world_template):
    import json

    for record in (world.out / "ingredients").glob("ft_*/ingredient.json"):  # as the original wrote them
        info = json.loads(record.read_text())
        info["hparams"]["init_from"] = str(world_template.out / "ingredients" / "lp_init")
        record.write_text(json.dumps({**info, "metrics": {"init": {"name": "lp_init"}}}))
    init = context().pool.initialisation("auto")
    assert init.name == "lp_init" and init.path.is_relative_to(world.out)
