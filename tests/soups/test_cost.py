"""CostMeter: what a recipe's run took, measured only while the recipe runs."""

from __future__ import annotations

import mmap
import time

import pytest
import torch

from soup_exp.soups import cost
from soup_exp.soups.cost import CostMeter, host_rss_bytes
from soup_exp.soups.ingredients import LazyWeights, StateDictSource


def _allocate_and_free(size: int, hold_s: float) -> None:
    # fresh anonymous pages, each written so it is resident: an allocator's pool of freed
    # memory (resident already, after the tests before) cannot stand in for them
    big = mmap.mmap(-1, size)
    for offset in range(0, size, mmap.PAGESIZE):
        big[offset] = 1
    time.sleep(hold_s)
    big.close()


@pytest.mark.parametrize("high_water", [True, False], ids=["kernel-high-water", "sampled"])
def test_a_tensor_the_recipe_allocates_shows_in_the_peak_host_memory_once_freed(high_water, monkeypatch):
    size = 200 * 2**20
    if not high_water:
        monkeypatch.setattr(cost, "reset_peak_rss", lambda: False)
    elif not cost.reset_peak_rss():
        pytest.skip("this kernel does not let a process reset its RSS high-water mark")

    def recipe():
        # the kernel's mark misses nothing; the sampler needs the pages held for a few samples
        _allocate_and_free(size, 0.0 if high_water else 0.5)
        yield "soup"

    before = host_rss_bytes()
    with CostMeter(1) as meter:
        assert list(meter.measured(recipe)) == ["soup"]
    assert meter.cost().peak_host_bytes >= before + 0.9 * size
    assert host_rss_bytes() < meter.cost().peak_host_bytes  # the peak, not the memory now


def test_the_peak_is_the_recipes_not_the_processs_earlier_peak():
    if not cost.reset_peak_rss():
        pytest.skip("this kernel does not let a process reset its RSS high-water mark")
    _allocate_and_free(200 * 2**20, 0.0)
    with CostMeter(1) as meter:
        list(meter.measured(lambda: ["soup"]))
    assert meter.cost().peak_host_bytes < host_rss_bytes() + 100 * 2**20


def test_time_the_caller_spends_between_soups_is_not_the_recipes():
    def recipe():
        yield 1
        yield 2

    with CostMeter(1) as meter:
        walls = []
        for _ in meter.measured(recipe):
            time.sleep(0.3)  # the stage writing a soup
            walls.append(meter.cost().wall_s)
    assert 0 < walls[0] <= walls[1] < 0.3


def test_reads_are_counted_in_models_of_the_given_size():
    model = LazyWeights("m", StateDictSource({"a": torch.zeros(3, 4), "b": torch.zeros(4, dtype=torch.float64)}))
    with CostMeter(model.nbytes()) as meter:
        list(meter.measured(lambda: [model.state_dict(), model.get("a")]))
    assert model.nbytes() == 3 * 4 * 4 + 4 * 8
    assert meter.cost().ingredient_reads == 1 + 48 / 80 and meter.cost().held_out_passes == 0
