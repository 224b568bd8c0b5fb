import json
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from torch.utils.data import Sampler
from torchvision import datasets, transforms

from soup_exp.data.classes import ClassSpace
from soup_exp.data.heldout import build_heldout, build_train_samples, heldout_split
from soup_exp.data.layout import DatasetLayoutError
from soup_exp.errors import ConfigError
from soup_exp.stages.entry import packaged_config_dir

from .conftest import JPEG, PNG, put, wnid_tree

PACKAGED_HELDOUT = OmegaConf.load(packaged_config_dir() / "data" / "imagenet.yaml").heldout

SPACE = ClassSpace.from_config([0, 1, 2])


@pytest.fixture
def train_cfg(tmp_path):
    wnid_tree(tmp_path / "imagenet" / "train", SPACE.wnids, "{w}_{i:03d}.JPEG", per_class=10)
    return {"classes": [0, 1, 2], "roots": {"ImageNet": str(tmp_path / "imagenet")},
            "heldout": {"per_class": 3, "seed": 0, "index_file": None, "index_file_lists": "heldout",
                        "authors_check": True, "split_dir": str(tmp_path / "splits")}}


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


def test_mask_ones_are_the_heldout_images(train_cfg, tmp_path):
    mask = np.zeros(30)  # float 0/1, like the authors' imagenet_98_idxs.npy: ones = held out
    mask[[0, 11, 29]] = 1
    np.save(tmp_path / "idx.npy", mask)
    with_mask = {**train_cfg, "heldout": {**train_cfg["heldout"], "index_file": str(tmp_path / "idx.npy")}}
    with_mask["heldout"]["index_file_lists"] = PACKAGED_HELDOUT.index_file_lists  # the default reading
    listing, positions = heldout_split(with_mask, SPACE)
    assert positions.tolist() == [0, 11, 29]
    assert len(build_train_samples(with_mask, SPACE)) == 27
    _, inverted = heldout_split(_with_file(train_cfg, tmp_path / "idx.npy", "train"), SPACE)
    assert len(inverted) == 27 and not {0, 11, 29} & set(inverted.tolist())


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


# ---- the authors' code path: datasets/common.py and datasets/imagenet.py -------------------

class _SubsetSampler(Sampler):  # their SubsetSampler
    def __init__(self, indices):
        self.indices = indices

    def __iter__(self):
        return (i for i in self.indices)

    def __len__(self):
        return len(self.indices)


class _ImageFolderWithPaths(datasets.ImageFolder):  # their ImageFolderWithPaths
    def __init__(self, path, transform):
        super().__init__(path, transform)

    def __getitem__(self, index):
        image, label = super(_ImageFolderWithPaths, self).__getitem__(index)  # noqa: UP008
        return {"images": image, "labels": label, "image_paths": self.samples[index][0]}


def _authors_imagenet2p(train_dir, idx_file):
    """Their ImageNet2p.populate_train + get_train_sampler, iterated as their held-out loop does."""
    train_dataset = _ImageFolderWithPaths(str(train_dir), transform=transforms.ToTensor())
    with open(idx_file, "rb") as f:
        idxs = np.load(f)
    idxs = idxs.astype("int")
    sampler = _SubsetSampler(np.where(idxs)[0])
    loader = torch.utils.data.DataLoader(train_dataset, sampler=sampler, batch_size=4, num_workers=0)
    paths, labels = [], []
    for batch in loader:
        paths.extend(batch["image_paths"])
        labels.extend(batch["labels"].tolist())
    train = {train_dataset.samples[i][0] for i in np.where((1 - idxs).astype("int"))[0]}  # their ImageNet98p
    return paths, labels, train, sampler, train_dataset


@pytest.fixture
def tricky_tree(tmp_path):
    """Names whose order differs between naive and ImageFolder sorting, mixed extensions, a stray file."""
    root = tmp_path / "imagenet"
    for w in SPACE.wnids:
        for name in (f"{w}_10.JPEG", f"{w}_9.JPEG", f"{w}_100.JPEG", f"{w}_1.jpeg", f"{w}_2.png",
                     "A_upper.JPEG", "a_lower.JPG", f"{w}_0011.JPEG"):
            put(root / "train" / w / name, PNG if name.endswith(".png") else JPEG)
        put(root / "train" / w / "notes.txt", b"not an image")
    mask = np.zeros(24)
    mask[[1, 4, 7, 8, 15, 20, 23]] = 1
    np.save(tmp_path / "imagenet_98_idxs.npy", mask)
    cfg = {"classes": [0, 1, 2], "roots": {"ImageNet": str(root)},
           "heldout": {"per_class": 26, "seed": 0, "index_file": str(tmp_path / "imagenet_98_idxs.npy"),
                       "index_file_lists": "heldout", "authors_check": True, "split_dir": None}}
    return root / "train", tmp_path / "imagenet_98_idxs.npy", cfg


def test_default_config_selects_the_authors_imagenet2p(tricky_tree):
    train_dir, idx_file, cfg = tricky_tree
    paths, labels, train, _, _ = _authors_imagenet2p(train_dir, idx_file)
    held = build_heldout(cfg, SPACE)
    assert held.paths == paths and held.targets.tolist() == labels  # same images, same order
    ours_train = build_train_samples(cfg, SPACE)
    assert {p for p, _ in ours_train} == train and len(ours_train) == 24 - 7
    listing, _ = heldout_split(cfg, SPACE)
    folder = datasets.ImageFolder(str(train_dir))
    assert [listing.path(i) for i in range(len(listing))] == [p for p, _ in folder.samples]


def test_the_authors_check_runs_on_full_length_masks(tricky_tree, monkeypatch):
    from soup_exp.data import heldout

    train_dir, idx_file, cfg = tricky_tree
    _, _, _, sampler, dataset = _authors_imagenet2p(train_dir, idx_file)
    expected = Path(dataset[sampler.indices[2]]["image_paths"]).name  # their assertion, at position 2
    monkeypatch.setattr(heldout, "AUTHORS_TRAIN_IMAGES", 24)
    monkeypatch.setattr(heldout, "AUTHORS_CHECK_POSITION", 2)
    monkeypatch.setattr(heldout, "AUTHORS_CHECK_FILE", expected)
    assert build_heldout(cfg, SPACE).paths[2].endswith(expected)
    with pytest.raises(DatasetLayoutError, match="held-out check failed.*index_file_lists=train reads"):
        build_heldout(_with_file(cfg, idx_file, "train"), SPACE)
    monkeypatch.setattr(heldout, "AUTHORS_CHECK_FILE", "n01675722_4108.JPEG")
    with pytest.raises(DatasetLayoutError, match=r"should be n01675722_4108\.JPEG.*listing of .* differs"):
        build_heldout(cfg, SPACE)
    unchecked = {**cfg, "heldout": {**cfg["heldout"], "authors_check": False}}
    assert len(build_heldout(unchecked, SPACE)) == 7
    monkeypatch.setattr(heldout, "AUTHORS_TRAIN_IMAGES", 1_281_167)  # other lengths are not the authors' file
    assert len(build_heldout(cfg, SPACE)) == 7
