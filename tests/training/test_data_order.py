"""The training order is a function of (seed, epoch, index) only: every world size sees the
same global batches with the same per-sample augmentation seeds, and resuming mid-epoch
continues exactly where the interrupted run was."""

from __future__ import annotations

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
