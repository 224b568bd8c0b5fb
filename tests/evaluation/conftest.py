"""Fixtures of the evaluator tests; the helpers live in ``eval_testkit`` next to this file."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from eval_testkit import NUM_IDS, LogitProjection, hand_accuracy, make_dataset  # noqa: E402


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture
def suite(tmp_path):
    """Three datasets with identity, column-select and many-to-one max projections."""
    rng = np.random.default_rng(0)
    table = rng.normal(size=(NUM_IDS, 10)).astype(np.float32)
    groups_r = ((2,), (5,), (7,))
    groups_o = ((1, 3), (4,), (8, 9))
    spec = {
        "ImageNet": [(i, int(rng.integers(10))) if i % 3 else (i, int(np.argmax(table[i])))
                     for i in range(NUM_IDS)] * 2,
        "ImageNetR": [(i, i % 3) for i in range(NUM_IDS)],
        "ObjectNet": [(i, (i * 2) % 3) for i in range(NUM_IDS)],
    }
    data_root = tmp_path / "data"
    datasets = [
        make_dataset(data_root, "ImageNet", spec["ImageNet"], 10),
        make_dataset(data_root, "ImageNetR", spec["ImageNetR"], 3, LogitProjection(groups_r)),
        make_dataset(data_root, "ObjectNet", spec["ObjectNet"], 3, LogitProjection(groups_o), border_crop=2),
    ]
    expected = {
        "ImageNet": hand_accuracy(table, spec["ImageNet"]),
        "ImageNetR": hand_accuracy(table, spec["ImageNetR"], groups_r),
        "ObjectNet": hand_accuracy(table, spec["ObjectNet"], groups_o),
    }
    return {"table": table, "datasets": datasets, "expected": expected, "spec": spec,
            "groups": {"ImageNetR": groups_r, "ObjectNet": groups_o}, "tmp": tmp_path}
