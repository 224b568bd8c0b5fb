from __future__ import annotations

import os
import signal

import pytest
import torch
from tiny_learning import Tiny, blobs, epoch_batches
from torch import nn

from soup_exp.cluster.signals import StopRequested
from soup_exp.soups import uniform_soup
from soup_exp.soups.learned import learned_soup


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


def test_starts_at_uniform_soup():
    x, y = blobs()
    sds = _ingredients(x, y)
    result = learned_soup(sds, Tiny(), epoch_batches(x, y), epochs=0)
    uniform = uniform_soup(sds)
    for k in uniform:
        torch.testing.assert_close(result.state_dict[k], uniform[k])
    assert result.beta == 1.0
    assert all(abs(c - 0.25) < 1e-7 for row in result.coefficients.values() for c in row)


def test_by_layer_loss_decreases_and_one_vector_per_tensor():
    x, y = blobs()
    sds = _ingredients(x, y)
    model = Tiny()
    result = learned_soup(sds, model, epoch_batches(x, y), epochs=5, mode="by_layer")
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
    x, y = blobs()
    sds = _ingredients(x, y)
    result = learned_soup(sds, Tiny(), epoch_batches(x, y), epochs=5, mode="per_model")
    assert len(result.coefficients) == len(sds)
    good, bad = result.coefficients[0] + result.coefficients[2], result.coefficients[1] + result.coefficients[3]
    assert good > bad
    assert result.curve[-1]["loss"] < result.curve[0]["loss"]


def test_host_streaming_path_matches_gradient():
    from soup_exp.soups.learned import _MixFromHost

    stack = torch.randn(3, 4, 5, dtype=torch.float64)
    w = torch.rand(3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda w: _MixFromHost.apply(w, stack), (w,))


def _stop_at(step):
    """An ``on_step`` that sends this process a real SIGINT after optimiser step ``step``."""
    def on_step(point):
        if point["step"] + 1 == step:
            os.kill(os.getpid(), signal.SIGINT)
    return on_step


def _assert_same(a, b):
    assert a.coefficients == b.coefficients and a.beta == b.beta and a.curve == b.curve
    for key in a.state_dict:
        assert torch.equal(a.state_dict[key], b.state_dict[key]), key


@pytest.mark.parametrize("mode", ["by_layer", "per_model"])
@pytest.mark.parametrize("stop_at", [1, 3, 4, 9])  # mid-epoch, an epoch's last batch, the very last step
def test_a_soup_stopped_by_sigint_resumes_to_identical_coefficients(tmp_path, mode, stop_at):
    x, y = blobs()
    sds = _ingredients(x, y)
    settings = {"mode": mode, "epochs": 3, "state_file": tmp_path / "state.safetensors"}
    straight = learned_soup(sds, Tiny(), epoch_batches(x, y), mode=mode, epochs=3)
    with pytest.raises(StopRequested) as stopped:
        learned_soup(sds, Tiny(), epoch_batches(x, y), on_step=_stop_at(stop_at), **settings)
    assert stopped.value.signum == signal.SIGINT and stopped.value.step == stop_at
    assert stopped.value.where == f"step {stop_at}, epoch {(stop_at - 1) // 3 + 1} of 3"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler

    steps = []
    resumed = learned_soup(sds, Tiny(), epoch_batches(x, y), on_step=steps.append, **settings)
    assert [p["step"] for p in steps] == list(range(stop_at, 9))
    _assert_same(straight, resumed)


def test_state_saved_for_other_settings_or_ingredients_is_not_resumed(tmp_path, caplog):
    x, y = blobs()
    sds = _ingredients(x, y)
    state = tmp_path / "state.safetensors"
    with pytest.raises(StopRequested):
        learned_soup(sds, Tiny(), epoch_batches(x, y), epochs=2, state_file=state, on_step=_stop_at(2))
    for changed, why in [({"lr": 0.1}, "recipe parameters changed (lr: 0.05 -> 0.1)"),
                         ({"inputs": {"seed": 1}}, "the seed (which orders the held-out batches) changed")]:
        caplog.clear()
        steps = []
        with caplog.at_level("WARNING"):
            fresh = learned_soup(sds, Tiny(), epoch_batches(x, y), epochs=2, state_file=state, on_step=steps.append,
                                 **changed)
        assert f"{state} was saved for other inputs ({why}): starting the learned soup afresh" in caplog.text
        assert len(steps) == 6
        _assert_same(fresh, learned_soup(sds, Tiny(), epoch_batches(x, y), epochs=2,
                                         **{k: v for k, v in changed.items() if k != "inputs"}))
        with pytest.raises(StopRequested):  # back to the first settings' state for the next case
            learned_soup(sds, Tiny(), epoch_batches(x, y), epochs=2, state_file=state, on_step=_stop_at(2))


@pytest.mark.parametrize("save", [1, 3])  # after the first epoch; after the last, before the soup is returned
def test_a_signal_while_an_epoch_is_saved_stops_after_the_save(tmp_path, monkeypatch, save):
    import soup_exp.soups.learned as learned

    x, y = blobs()
    sds = _ingredients(x, y)
    real, saves = learned.save_state, []

    def save_then_signal(*args):
        real(*args)
        saves.append(args[2].step)
        if len(saves) == save:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(learned, "save_state", save_then_signal)
    settings = {"epochs": 3, "state_file": tmp_path / "state.safetensors"}
    with pytest.raises(StopRequested) as stopped:
        learned_soup(sds, Tiny(), epoch_batches(x, y), **settings)
    assert stopped.value.where == f"step {3 * save}, epoch {save} of 3" and saves == [3, 6, 9][:save]
    monkeypatch.setattr(learned, "save_state", real)
    steps = []
    _assert_same(learned_soup(sds, Tiny(), epoch_batches(x, y), epochs=3),
                 learned_soup(sds, Tiny(), epoch_batches(x, y), on_step=steps.append, **settings))
    assert len(steps) == 9 - 3 * save
