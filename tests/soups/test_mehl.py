"""MEHL-Soup: block coordinate descent on the ingredients' hyperplane."""

from __future__ import annotations

import os
import signal

import pytest
import torch
from tiny_learning import Tiny, blobs, epoch_batches
from torch import nn

from soup_exp.cluster.signals import StopRequested
from soup_exp.soups.ingredients import LazyWeights, StateDictSource
from soup_exp.soups.mehl import block_schedule, cosine_lr, mehl_soup


def _ingredients(n=5, spread=0.6):
    torch.manual_seed(0)
    base = Tiny().state_dict()
    g = torch.Generator().manual_seed(1)
    return [{k: v + spread * torch.randn(v.shape, generator=g) for k, v in base.items()} for _ in range(n)]


def _direct(sds, batches, *, epochs, lr, warmup, by_layer):
    """All coefficients at once, by autograd through ``c + sum_i x_i (theta_i - c) / |theta_i - c|``
    (the reference's hyperplane, one block holding the whole pool)."""
    keys = list(sds[0])
    n = len(sds)
    center = {k: sum(sd[k] for sd in sds) / n for k in keys}
    diffs = {k: torch.stack([sd[k] - center[k] for sd in sds]) for k in keys}
    groups = [[k] for k in keys] if by_layer else [keys]
    row = {k: r for r, group in enumerate(groups) for k in group}
    norms = torch.stack([torch.sqrt(sum(diffs[k].flatten(1).pow(2).sum(1) for k in g)) for g in groups], 1)
    x = torch.zeros(n, len(groups), requires_grad=True)
    optimizer = torch.optim.AdamW([x], lr=lr, weight_decay=0.0)
    model = Tiny()
    per_epoch = len(batches(0))
    steps = epochs * per_epoch
    for epoch in range(epochs):
        for b, (images, targets) in enumerate(batches(epoch)):
            step = epoch * per_epoch + b
            warm = int(steps * warmup)
            optimizer.param_groups[0]["lr"] = (lr * (step + 1) / warm if step < warm else
                                               0.5 * (1 + torch.cos(torch.tensor(torch.pi * (step - warm) / (steps - warm))).item()) * lr)
            params = {k: center[k] + torch.tensordot(x[:, row[k]] / norms[:, row[k]], diffs[k], dims=1) for k in keys}
            loss = nn.functional.cross_entropy(torch.func.functional_call(model, params, (images,)), targets)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    s = (x.detach().double() / norms.double())  # (n, rows)
    coefficients = (1.0 / n + s - s.sum(0, keepdim=True) / n).T  # rows x n
    soup = {k: center[k] + torch.tensordot(x.detach()[:, row[k]] / norms[:, row[k]], diffs[k], dims=1) for k in keys}
    return soup, coefficients


@pytest.mark.parametrize("by_layer", [False, True])
def test_one_block_of_the_whole_pool_is_the_direct_optimisation(by_layer):
    x, y = blobs()
    sds = _ingredients()
    batches = epoch_batches(x, y)
    mode = "by_layer" if by_layer else "per_model"
    result = mehl_soup(sds, Tiny(), batches, mode=mode, block_size=len(sds), epochs=3, lr=0.05, grad_clip=None)
    soup, coefficients = _direct(sds, batches, epochs=3, lr=0.05, warmup=0.2, by_layer=by_layer)
    for k in soup:
        torch.testing.assert_close(result.state_dict[k], soup[k], atol=1e-5, rtol=1e-4)
    ours = (torch.tensor([result.coefficients], dtype=torch.float64) if not by_layer
            else torch.tensor([result.coefficients[k] for k in soup], dtype=torch.float64))
    torch.testing.assert_close(ours, coefficients, atol=1e-5, rtol=1e-4)
    assert torch.allclose(ours.sum(1), torch.ones(len(ours), dtype=torch.float64))
    assert len(result.curve) == 9 and result.blocks == [[f"state_dict_{i}" for i in block_schedule(5, 5, 1, 1)[0]]]
    # the recorded coefficients rebuild the soup from the ingredients
    for r, k in enumerate(soup):
        weights = ours[r if by_layer else 0]
        torch.testing.assert_close(sum(float(w) * sd[k] for w, sd in zip(weights, sds, strict=True)),
                                   result.state_dict[k], atol=1e-5, rtol=1e-4)


def test_coefficients_go_below_zero_when_extrapolating_helps():
    """theta_1 = w + d and theta_2 = w + 2d: the good model w is 2 theta_1 - theta_2."""
    x, y = blobs()
    model = Tiny()
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(200):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    good = {k: v.detach().clone() for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(3)
    d = {k: 0.8 * torch.randn(v.shape, generator=g) for k, v in good.items()}
    sds = [{k: good[k] + d[k] for k in good}, {k: good[k] + 2 * d[k] for k in good}]
    result = mehl_soup(sds, Tiny(), epoch_batches(x, y), mode="per_model", block_size=2, epochs=30, lr=0.1)
    a1, a2 = result.coefficients
    assert a2 < 0 < a1 and a1 + a2 == pytest.approx(1.0)

    def loss(sd):
        model.load_state_dict(sd)
        with torch.no_grad():
            return float(nn.functional.cross_entropy(model(x), y))
    assert loss(result.state_dict) < min(loss(sd) for sd in sds)


class _Counted(StateDictSource):
    def __init__(self, name, state_dict, reads):
        super().__init__(state_dict)
        self.name, self.reads = name, reads

    def get(self, key):
        self.reads.append(self.name)
        return super().get(key)


def test_each_step_holds_one_block_of_ingredients_not_the_pool():
    x, y = blobs()
    sds = _ingredients(n=7)
    reads: list[str] = []
    pool = [LazyWeights(f"m{i}", _Counted(f"m{i}", sd, reads)) for i, sd in enumerate(sds)]
    per_step: list[set[str]] = []

    def on_step(point):
        per_step.append(set(reads))
        reads.clear()

    result = mehl_soup(pool, Tiny(), epoch_batches(x, y), block_size=3, epochs=2, on_step=on_step)
    blocks = [set(b) for b in result.blocks]
    assert [len(b) for b in blocks] == [3, 3, 1]
    steps_per_block = 2 * 3
    for index, block in enumerate(blocks):
        first, *rest = per_step[index * steps_per_block:(index + 1) * steps_per_block]
        assert first <= block and all(not r for r in rest)  # read at the block's start, then never
    assert not reads  # the soup is not re-read at the end
    assert len(per_step) == 3 * steps_per_block


def _stop_at(step):
    def on_step(point):
        if point["step"] + 1 == step:
            os.kill(os.getpid(), signal.SIGINT)
    return on_step


@pytest.mark.parametrize("stop_at", [2, 6, 7, 12])  # mid-block, a block's last step, a new block, the end
def test_a_soup_stopped_by_sigint_resumes_to_identical_coefficients(tmp_path, stop_at):
    x, y = blobs()
    sds = _ingredients(n=4)
    settings = {"block_size": 2, "epochs": 2, "mode": "by_layer"}
    straight = mehl_soup(sds, Tiny(), epoch_batches(x, y), **settings)
    state = tmp_path / "state.safetensors"
    with pytest.raises(StopRequested) as stopped:
        mehl_soup(sds, Tiny(), epoch_batches(x, y), on_step=_stop_at(stop_at), state_file=state, **settings)
    assert stopped.value.step == stop_at
    steps = []
    resumed = mehl_soup(sds, Tiny(), epoch_batches(x, y), on_step=steps.append, state_file=state, **settings)
    assert [p["step"] for p in steps] == list(range(stop_at, 12))
    assert resumed.coefficients == straight.coefficients and resumed.curve == straight.curve
    for key in straight.state_dict:
        assert torch.equal(resumed.state_dict[key], straight.state_dict[key]), key


def test_schedule_and_blocks():
    assert cosine_lr(1.0, 0, 10, 0.2) == 0.5 and cosine_lr(1.0, 2, 10, 0.2) == 1.0
    assert cosine_lr(1.0, 9, 10, 0.2) == pytest.approx(0.5 * (1 + torch.cos(torch.tensor(7 / 8 * torch.pi)).item()))
    blocks = block_schedule(7, 3, 2, seed=1)
    assert [len(b) for b in blocks] == [3, 3, 1, 3, 3, 1]
    assert sorted(sum(blocks[:3], [])) == list(range(7)) and blocks[:3] != blocks[3:]
    assert block_schedule(7, 3, 2, seed=1) == blocks

