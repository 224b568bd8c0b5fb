"""The per-image correctness file beside results.jsonl."""

from __future__ import annotations

import numpy as np
import pytest

from soup_exp.artifacts.correctness import (
    CorrectnessFileError,
    Hits,
    correctness_path,
    drop_hits,
    matching_hits,
    read_hits,
    update_hits,
    write_hits,
)

# the paper's suite: held-out, ImageNet and the five shifts, about 150k images
PAPER_SUITE = {"ImageNet2p": 25_000, "ImageNet": 50_000, "ImageNetV2": 10_000, "ImageNetR": 30_000,
               "ImageNetSketch": 50_889, "ObjectNet": 18_574, "ImageNetA": 7_500}


def test_bits_round_trip_and_one_model_update_keeps_the_others(tmp_path):
    rng = np.random.default_rng(0)
    path = correctness_path(tmp_path / "results.jsonl")
    first = {"a": {"ImageNet": Hits(rng.random(13) < 0.5, "id1", "wa")},
             "b": {"ImageNet": Hits(rng.random(13) < 0.5, "id1", "wb"), "ImageNetA": Hits(rng.random(9) < 0.5, "id2", "wb")}}
    write_hits(path, first)
    update_hits(path, "a", {"ImageNetA": Hits(np.ones(9, bool), "id2", "wa")})
    read = read_hits(path)
    assert (read["a"]["ImageNet"].bits == first["a"]["ImageNet"].bits).all() and read["a"]["ImageNetA"].bits.all()
    assert (read["b"]["ImageNetA"].bits == first["b"]["ImageNetA"].bits).all()
    assert read["b"]["ImageNet"].dataset_identity == "id1" and read["b"]["ImageNet"].weights == "wb"
    drop_hits(path, ["b"])
    assert set(read_hits(path)) == {"a"}


def test_the_paper_suite_of_100_models_stays_under_2_mb_per_model(tmp_path):
    rng = np.random.default_rng(1)
    hits = {f"model_{i}": {d: Hits(rng.random(n) < 0.7, d, f"w{i}") for d, n in PAPER_SUITE.items()}
            for i in range(100)}
    path = tmp_path / "results.correct.safetensors"
    write_hits(path, hits)
    assert path.stat().st_size / 100 < 2e6
    assert path.stat().st_size < 1.05 * sum(PAPER_SUITE.values()) / 8 * 100 + 100 * 7 * 200  # bits plus their keys


def test_only_bits_measured_on_what_the_row_reports_are_used():
    bits = np.array([True, False, True, True])
    row = {"name": "a", "ImageNet": 0.75, "ImageNetA": 0.5,
           "meta": {"weights": "w", "datasets": {"ImageNet": "id", "ImageNetA": "idA"}}}
    assert set(matching_hits(row, {"ImageNet": Hits(bits, "id", "w")})) == {"ImageNet"}
    assert matching_hits(row, {"ImageNet": Hits(bits, "id", "other weights")}) == {}
    assert matching_hits(row, {"ImageNet": Hits(bits, "changed data", "w")}) == {}
    assert matching_hits(row, {"ImageNetA": Hits(bits, "idA", "w")}) == {}  # 0.75 is not the row's 0.5


def test_a_corrupt_file_is_one_error_naming_it_and_the_fix(tmp_path):
    path = tmp_path / "results.correct.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(CorrectnessFileError, match=r"results\.correct\.safetensors .*eval\.force=true"):
        read_hits(path)
    assert read_hits(tmp_path / "absent.safetensors") == {}
