"""The training order is a function of (seed, epoch, index) only: every world size sees the
same global batches with the same per-sample augmentation seeds, and resuming mid-epoch
continues exactly where the interrupted run was."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from soup_exp.training.data import SeededDistributedSampler, TrainImages


class _Indices(Dataset):
    def __len__(self) -> int:
        return 23

    def __getitem__(self, item):
        return item


def _global_batches(world: int, global_batch: int, epoch: int, skip_batches: int = 0) -> list[set]:
    per_rank = []
    for rank in range(world):
        sampler = SeededDistributedSampler(_Indices(), num_replicas=world, rank=rank, seed=3)
        sampler.set_position(epoch, skip_batches * global_batch // world)
        loader = DataLoader(_Indices(), batch_size=global_batch // world, sampler=sampler,
                            drop_last=True, collate_fn=list)
        per_rank.append(list(loader))
    return [set().union(*(batches[i] for batches in per_rank)) for i in range(len(per_rank[0]))]


def test_global_batches_do_not_depend_on_world_size() -> None:
    one = _global_batches(1, 4, epoch=1)
    two = _global_batches(2, 4, epoch=1)
    assert len(one) == len(two) == 5
    assert one == two
    assert _global_batches(1, 4, epoch=2) != one


def test_resume_position_skips_exactly_the_consumed_batches() -> None:
    assert _global_batches(2, 4, epoch=0, skip_batches=2) == _global_batches(2, 4, epoch=0)[2:]


def test_augmentation_depends_only_on_the_sample_seed(tmp_path) -> None:
    def noisy(_image):
        return torch.rand(3)

    images = TrainImages([("a", 0), ("b", 1)], noisy, reader=lambda path: path)
    torch.manual_seed(0)
    first = images[(1, 1234)][0]
    torch.manual_seed(99)
    assert torch.equal(first, images[(1, 1234)][0])
    assert not torch.equal(first, images[(1, 1235)][0])
    state = torch.get_rng_state()
    images[(0, 5)]
    assert torch.equal(state, torch.get_rng_state()), "per-sample seeding must not leak into the caller"


def test_sample_seeding_touches_only_the_cpu_generator(monkeypatch) -> None:
    """Seeding every sample must not queue CUDA work (torch.manual_seed records a stack
    trace per call where CUDA is not initialised) yet draw what torch.manual_seed would."""
    from soup_exp.training.data import seeded_rngs

    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda seed: pytest.fail("CUDA seeded per sample"))
    before = torch.get_rng_state()
    with seeded_rngs(1234):
        drawn = torch.rand(3)
    monkeypatch.undo()
    torch.manual_seed(1234)
    assert torch.equal(drawn, torch.rand(3))
    torch.set_rng_state(before)


def test_training_threads_leave_the_loader_its_cores(monkeypatch) -> None:
    from soup_exp.utils.runtime import threads_beside_loader

    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    before = torch.get_num_threads()
    torch.set_num_threads(4)
    try:
        with threads_beside_loader(torch.device("cpu"), 1):
            assert torch.get_num_threads() == 3
        with threads_beside_loader(torch.device("cpu"), 8):
            assert torch.get_num_threads() == 1
        with threads_beside_loader(torch.device("cpu"), 0):
            assert torch.get_num_threads() == 4
        assert torch.get_num_threads() == 4
    finally:
        torch.set_num_threads(before)
