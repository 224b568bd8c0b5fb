import json

import numpy as np
import pytest

from soup_exp.data.classes import ClassSpace
from soup_exp.data.heldout import build_heldout, build_train_samples, heldout_split
from soup_exp.data.layout import DatasetLayoutError
from soup_exp.errors import ConfigError

from .conftest import wnid_tree

SPACE = ClassSpace.from_config([0, 1, 2])


@pytest.fixture
def train_cfg(tmp_path):
    wnid_tree(tmp_path / "imagenet" / "train", SPACE.wnids, "{w}_{i:03d}.JPEG", per_class=10)
    return {"classes": [0, 1, 2], "roots": {"ImageNet": str(tmp_path / "imagenet")},
            "heldout": {"per_class": 3, "seed": 0, "index_file": None, "index_file_lists": "train",
                        "split_dir": str(tmp_path / "splits")}}


def test_seeded_split_is_per_class_and_deterministic(train_cfg, tmp_path):
    held = build_heldout(train_cfg, SPACE)
    assert held.name == "ImageNet2p" and len(held) == 9 and held.num_targets == 3
    assert [sum(t == c for _, t in held.samples) for c in range(3)] == [3, 3, 3]
    train = build_train_samples(train_cfg, SPACE)
    assert len(train) == 21 and not {p for p, _ in train} & {p for p, _ in held.samples}
    other_dir = {**train_cfg, "heldout": {**train_cfg["heldout"], "split_dir": str(tmp_path / "s2")}}
    assert build_heldout(other_dir, SPACE).samples == held.samples
    reseeded = {**train_cfg, "heldout": {**train_cfg["heldout"], "seed": 1}}
    assert build_heldout(reseeded, SPACE).samples != held.samples


def test_subset_split_is_full_split_restricted(train_cfg):
    full = build_heldout(train_cfg, SPACE).paths
    one = ClassSpace.from_config([1])
    assert build_heldout(train_cfg, one).paths == [p for p in full if SPACE.wnids[1] in p]


def test_split_saved_with_hash_and_reused(train_cfg, tmp_path):
    build_heldout(train_cfg, SPACE)
    (npy,) = (tmp_path / "splits").glob("heldout-*.npy")
    sidecar = json.loads(npy.with_suffix(".json").read_text())
    assert sidecar["heldout_images"] == 9 and len(sidecar["heldout_sha256"]) == 64
    positions = np.load(npy)
    # a saved file that no longer hashes right is recomputed, not trusted
    np.save(npy, np.arange(9))
    assert build_heldout(train_cfg, SPACE).samples == build_heldout(
        {**train_cfg, "heldout": {**train_cfg["heldout"], "split_dir": None}}, SPACE).samples
    assert np.array_equal(np.load(npy), positions)
    mtime = npy.stat().st_mtime_ns
    build_heldout(train_cfg, SPACE)
    assert npy.stat().st_mtime_ns == mtime  # reused


def _with_file(cfg, path, lists):
    return {**cfg, "heldout": {**cfg["heldout"], "index_file": str(path), "index_file_lists": lists}}


def test_authors_style_mask_lists_train(train_cfg, tmp_path):
    mask = np.ones(30)  # float 0/1, like imagenet_98_idxs.npy
    mask[[0, 11, 29]] = 0
    np.save(tmp_path / "idx.npy", mask)
    listing, positions = heldout_split(_with_file(train_cfg, tmp_path / "idx.npy", "train"), SPACE)
    assert positions.tolist() == [0, 11, 29]
    assert len(build_train_samples(_with_file(train_cfg, tmp_path / "idx.npy", "train"), SPACE)) == 27


def test_txt_positions_and_paths_list_heldout(train_cfg, tmp_path):
    (tmp_path / "pos.txt").write_text("4\n15\n")
    _, positions = heldout_split(_with_file(train_cfg, tmp_path / "pos.txt", "heldout"), SPACE)
    assert positions.tolist() == [4, 15]
    w = SPACE.wnids[2]
    (tmp_path / "paths.txt").write_text(f"{w}/{w}_007.JPEG\ntrain/{w}/{w}_001.JPEG\n")
    held = build_heldout(_with_file(train_cfg, tmp_path / "paths.txt", "heldout"), SPACE)
    assert [p.rsplit("/", 1)[1] for p in held.paths] == [f"{w}_001.JPEG", f"{w}_007.JPEG"]


def test_index_file_errors(train_cfg, tmp_path):
    np.save(tmp_path / "short.npy", np.ones(29, dtype=bool))
    with pytest.raises(DatasetLayoutError, match="mask of length 29.*has 30 images"):
        heldout_split(_with_file(train_cfg, tmp_path / "short.npy", "train"), SPACE)
    np.save(tmp_path / "far.npy", np.array([3, 99]))
    with pytest.raises(DatasetLayoutError, match="position 99"):
        heldout_split(_with_file(train_cfg, tmp_path / "far.npy", "heldout"), SPACE)
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ConfigError, match="pickled files are refused"):
        heldout_split(_with_file(train_cfg, tmp_path / "obj.npy", "heldout"), SPACE)
    with pytest.raises(ConfigError, match="index_file_lists"):
        heldout_split(_with_file(train_cfg, tmp_path / "far.npy", "both"), SPACE)


def test_too_few_images_to_hold_out(train_cfg):
    cfg = {**train_cfg, "heldout": {**train_cfg["heldout"], "per_class": 10}}
    with pytest.raises(DatasetLayoutError, match="too few"):
        build_heldout(cfg, SPACE)


def test_full_imagenet_tree_with_one_image_per_class(data_cfg):
    with pytest.raises(DatasetLayoutError, match="has 1 images: too few"):
        build_heldout(data_cfg, ClassSpace.full())
