import contextlib
import logging
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from eval_testkit import eval_transform, write_image

from soup_exp.errors import SoupExpError
from soup_exp.evaluation import cache as cache_module
from soup_exp.evaluation import sources
from soup_exp.evaluation.cache import CacheError, PreprocessedCache, _publish
from soup_exp.evaluation.transforms import split_transform


def _entries(cache_dir: Path) -> list[str]:
    return sorted(p.stem for p in cache_dir.glob("*.uint8"))


def _read_all(entry) -> torch.Tensor:
    return torch.cat([images for images, _ in entry.iter_batches(3)])


def _count_decodes(monkeypatch) -> list[int]:
    reads: list[int] = []
    original = sources.DecodedImages.__getitem__
    monkeypatch.setattr(sources.DecodedImages, "__getitem__",
                        lambda self, i: reads.append(i) or original(self, i))
    return reads


def test_first_pass_fills_later_passes_read(suite, monkeypatch, caplog):
    dataset = suite["datasets"][0]
    split = split_transform(eval_transform())
    store = PreprocessedCache(suite["tmp"] / "cache", batch_size=4, progress=False)
    reads = _count_decodes(monkeypatch)
    with caplog.at_level(logging.INFO, logger="soup_exp.evaluation.cache"):
        first = store.get(dataset, split)
    assert "building preprocessed cache" in caplog.text and "(15.0 KiB)" in caplog.text
    assert f"cached {len(dataset)} images" in caplog.text
    decoded_once = len(reads)
    assert decoded_once >= len(dataset)
    second = store.get(dataset, split)
    assert len(reads) == decoded_once  # no decoding on a hit
    assert first.path == second.path and first.meta["shape"] == [len(dataset), 3, 16, 16]
    assert first.nbytes == len(dataset) * 3 * 16 * 16 == os.path.getsize(first.path)
    expected = torch.stack([split.to_uint8(__import__("soup_exp.data.images", fromlist=["x"]).load_image(p))
                            for p in dataset.paths])
    assert torch.equal(_read_all(second), expected)


def test_changed_file_rebuilds_and_prunes_the_stale_entry(suite):
    dataset = suite["datasets"][0]
    split = split_transform(eval_transform())
    store = PreprocessedCache(suite["tmp"] / "cache", progress=False)
    old = store.get(dataset, split)
    before = _read_all(old)
    path = Path(dataset.paths[0])
    write_image(path, 7)
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    new = store.get(dataset, split)
    assert new.path != old.path
    assert _entries(store.dir) == [new.path.stem]
    after = _read_all(new)
    assert not torch.equal(before[0], after[0]) and torch.equal(before[1:], after[1:])


def test_changed_transform_gets_its_own_entry(suite):
    dataset = suite["datasets"][0]
    store = PreprocessedCache(suite["tmp"] / "cache", progress=False)
    a = store.get(dataset, split_transform(eval_transform(16)))
    b = store.get(dataset, split_transform(eval_transform(12)))
    assert a.path != b.path and b.meta["shape"][2:] == [12, 12]
    assert len(_entries(store.dir)) == 2  # another model's resolution is not stale
    assert store.lookup(dataset, split_transform(eval_transform(16))).path == a.path


def test_border_crop_is_part_of_the_key(suite):
    objectnet = suite["datasets"][2]
    split = split_transform(eval_transform())
    store = PreprocessedCache(suite["tmp"] / "cache", progress=False)
    cropped = store.get(objectnet, split)
    uncropped = store.get(type(objectnet)("ObjectNet", objectnet.samples, 3, objectnet.projection, 0,
                                          root=objectnet.root), split)
    assert cropped.path != uncropped.path


def test_incomplete_entry_is_ignored(suite):
    dataset = suite["datasets"][1]
    split = split_transform(eval_transform())
    store = PreprocessedCache(suite["tmp"] / "cache", progress=False)
    entry = store.get(dataset, split)
    with open(entry.path, "r+b") as f:
        f.truncate(10)
    assert store.lookup(dataset, split) is None
    rebuilt = store.get(dataset, split)
    assert os.path.getsize(rebuilt.path) == rebuilt.nbytes


@pytest.mark.parametrize("with_lock", [True, False])
def test_racing_jobs_agree_on_one_entry(suite, monkeypatch, with_lock):
    """Two builders at once: with the lock one waits; without it both decode, one publish
    wins and the loser uses the winner's file."""
    if not with_lock:
        monkeypatch.setattr(cache_module, "file_lock", lambda path, waiting=None: contextlib.nullcontext())
    dataset = suite["datasets"][0]
    split = split_transform(eval_transform())
    reads = _count_decodes(monkeypatch)
    barrier = threading.Barrier(2)
    results, errors = [None, None], []

    def job(k):
        try:
            barrier.wait()
            results[k] = PreprocessedCache(suite["tmp"] / "cache", batch_size=2, progress=False).get(dataset, split)
        except BaseException as error:  # surfaced below
            errors.append(error)

    threads = [threading.Thread(target=job, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert results[0].path == results[1].path
    assert torch.equal(_read_all(results[0]), _read_all(results[1]))
    assert len(_entries(suite["tmp"] / "cache")) == 1
    assert not list((suite["tmp"] / "cache").glob(".*.tmp"))
    per_build = len(dataset) + 1  # +1: the first image is decoded to learn the shape
    assert len(reads) == (per_build if with_lock else 2 * per_build)


def test_publish_loser_keeps_the_winners_file(tmp_path):
    final = tmp_path / "entry.uint8"
    winner, loser = tmp_path / "w.tmp", tmp_path / "l.tmp"
    winner.write_bytes(b"winner")
    loser.write_bytes(b"loser!")
    assert _publish(winner, final, 6) is True
    assert _publish(loser, final, 6) is False
    assert final.read_bytes() == b"winner" and not winner.exists() and not loser.exists()
    final.write_bytes(b"trunc")  # a crashed job's partial file is replaced
    loser.write_bytes(b"loser!")
    assert _publish(loser, final, 6) is True and final.read_bytes() == b"loser!"


def test_shuffled_reads_follow_the_order(suite):
    store = PreprocessedCache(suite["tmp"] / "cache", progress=False)
    entry = store.get(suite["datasets"][0], split_transform(eval_transform()))
    everything = _read_all(entry)
    order = np.random.default_rng(0).permutation(len(entry))
    got = list(entry.iter_batches(4, order))
    assert torch.equal(torch.cat([i for i, _ in got]), everything[order])
    assert torch.cat([j for _, j in got]).tolist() == order.tolist()


def test_not_enough_disk_space_is_a_clear_error(suite, monkeypatch):
    monkeypatch.setattr(cache_module.shutil, "disk_usage", lambda path: type("U", (), {"free": 10})())
    store = PreprocessedCache(suite["tmp"] / "cache", progress=False)
    with pytest.raises(CacheError, match="eval.cache.enabled=false"):
        store.get(suite["datasets"][0], split_transform(eval_transform()))


def test_missing_file_is_a_clear_error(suite):
    dataset = suite["datasets"][0]
    os.unlink(dataset.paths[3])
    with pytest.raises(SoupExpError, match="cannot read .*003.png"):
        PreprocessedCache(suite["tmp"] / "cache", progress=False).get(dataset, split_transform(eval_transform()))


def test_parallel_readers_keep_the_order(suite):
    store = PreprocessedCache(suite["tmp"] / "cache", progress=False)
    entry = store.get(suite["datasets"][0], split_transform(eval_transform()))
    order = np.random.default_rng(1).permutation(len(entry))
    for o in (None, order):
        one = list(entry.iter_batches(3, o, readers=1))
        many = list(entry.iter_batches(3, o, readers=3))
        assert len(one) == len(many)
        for (a, i), (b, j) in zip(one, many, strict=True):
            assert torch.equal(a, b) and torch.equal(i, j)


def test_ordered_map_stops_early_and_propagates_errors():
    from soup_exp.evaluation.sources import ordered_map

    assert list(ordered_map(lambda x: x * x, range(20), workers=3, ahead=4)) == [x * x for x in range(20)]
    first_two = []
    for value in ordered_map(lambda x: x, range(100), workers=2, ahead=4):
        first_two.append(value)
        if len(first_two) == 2:
            break
    assert first_two == [0, 1]

    def boom(x):
        if x == 5:
            raise ValueError("bad item 5")
        return x

    with pytest.raises(ValueError, match="bad item 5"):
        list(ordered_map(boom, range(10), workers=2, ahead=3))


def test_abandoned_temp_files_are_removed_but_live_ones_kept(suite):
    dataset = suite["datasets"][0]
    split = split_transform(eval_transform())
    store = PreprocessedCache(suite["tmp"] / "cache", progress=False)
    entry = cache_module.cache_key(dataset, split)["entry"]
    store.dir.mkdir(parents=True)
    # writers on another host: only idleness tells a crashed one from a live one
    old = store.dir / f".{entry}{cache_module.DATA_SUFFIX}.4242@otherhost.a1b2.tmp"
    live = store.dir / f".{entry}{cache_module.DATA_SUFFIX}.4343@otherhost.c3d4.tmp"
    old.write_bytes(b"x" * 10)
    live.write_bytes(b"x" * 10)
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    store.get(dataset, split)
    assert not old.exists() and live.exists()
