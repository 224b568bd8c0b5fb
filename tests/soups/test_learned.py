from __future__ import annotations

import torch
from torch import nn

from soup_exp.soups import uniform_soup
from soup_exp.soups.learned import learned_soup


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.image_encoder = nn.Sequential(nn.Linear(8, 16), nn.Tanh())
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        return self.head(self.image_encoder(x))


def _data(seed=0, n=96):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(3, 8, generator=g) * 2
    y = torch.randint(0, 3, (n,), generator=g)
    return centers[y] + torch.randn(n, 8, generator=g), y


def _ingredients(x, y, n=4):
    torch.manual_seed(0)
    base = Tiny()
    sds = []
    for i in range(n):
        model = Tiny()
        model.load_state_dict(base.state_dict())
        opt = torch.optim.SGD(model.parameters(), lr=0.2 if i % 2 == 0 else 0.0)
        for _ in range(20):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if i % 2:
            g = torch.Generator().manual_seed(i)
            sd = {k: v + 1.5 * torch.randn(v.shape, generator=g) for k, v in sd.items()}
        sds.append(sd)
    return sds


def _batches(x, y, bs=32):
    def per_epoch(epoch):
        g = torch.Generator().manual_seed(epoch)
        perm = torch.randperm(len(y), generator=g)
        return [(x[perm[i:i + bs]], y[perm[i:i + bs]]) for i in range(0, len(y), bs)]
    return per_epoch


def test_starts_at_uniform_soup():
    x, y = _data()
    sds = _ingredients(x, y)
    result = learned_soup(sds, Tiny(), _batches(x, y), epochs=0)
    uniform = uniform_soup(sds)
    for k in uniform:
        torch.testing.assert_close(result.state_dict[k], uniform[k])
    assert result.beta == 1.0
    assert all(abs(c - 0.25) < 1e-7 for row in result.coefficients.values() for c in row)


def test_by_layer_loss_decreases_and_one_vector_per_tensor():
    x, y = _data()
    sds = _ingredients(x, y)
    model = Tiny()
    result = learned_soup(sds, model, _batches(x, y), epochs=5, mode="by_layer")
    assert set(result.coefficients) == {k for k, _ in model.named_parameters()}
    assert all(len(v) == len(sds) and abs(sum(v) - 1) < 1e-5 for v in result.coefficients.values())
    first = result.curve[0]["loss"]
    last_epoch = [p["loss"] for p in result.curve if p["epoch"] == 4]
    assert sum(last_epoch) / len(last_epoch) < 0.8 * first
    model.load_state_dict(result.state_dict)
    with torch.no_grad():
        final = nn.functional.cross_entropy(result.beta * model(x), y)
    assert final < first
    assert result.beta != 1.0


def test_per_model_prefers_good_ingredients():
    x, y = _data()
    sds = _ingredients(x, y)
    result = learned_soup(sds, Tiny(), _batches(x, y), epochs=5, mode="per_model")
    assert len(result.coefficients) == len(sds)
    good, bad = result.coefficients[0] + result.coefficients[2], result.coefficients[1] + result.coefficients[3]
    assert good > bad
    assert result.curve[-1]["loss"] < result.curve[0]["loss"]


def test_host_streaming_path_matches_gradient():
    from soup_exp.soups.learned import _MixFromHost

    stack = torch.randn(3, 4, 5, dtype=torch.float64)
    w = torch.rand(3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda w: _MixFromHost.apply(w, stack), (w,))
