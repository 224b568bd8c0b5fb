import csv
import filecmp
import json
import os

import numpy as np
import pytest

from soup_exp.data.checker import check_datasets
from soup_exp.data.classes import ClassSpace
from soup_exp.data.images import load_image
from soup_exp.data.registry import build_eval_dataset, build_train_samples
from soup_exp.demo.drawing import class_look
from soup_exp.demo.synthetic import SUBDIRS, SyntheticSpec, ensure_synthetic, generate, plan

CLASSES = ["n02883205", "n07753592"]  # bow tie, banana: in R, A and ObjectNet


def synthetic_cfg(root, **overrides):
    syn = {"root": str(root), "seed": 0, "image_size": 16, "train_per_class": 3,
           "val_per_class": 2, "shift_per_class": 2, "pretrain_per_class": 2, "classes": CLASSES}
    syn.update(overrides)
    return {"classes": CLASSES, "synthetic": syn,
            "roots": {name: str(root / sub) for name, sub in SUBDIRS.items()},
            "heldout": {"per_class": 2, "seed": 0, "index_file": None, "split_dir": str(root.parent / "splits")},
            "objectnet": {"border_crop": 0}}


def tree_files(root):
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


def test_same_seed_gives_byte_identical_files_in_any_number_of_processes(tmp_path):
    spec = SyntheticSpec.from_data_cfg(synthetic_cfg(tmp_path / "final", train_label_noise=0.3))
    generate(spec, tmp_path / "a", final_root=tmp_path / "final")
    generate(spec, tmp_path / "b", final_root=tmp_path / "final", workers=2)
    files = tree_files(tmp_path / "a")
    assert files == tree_files(tmp_path / "b") and len(files) > 40
    match, mismatch, errors = filecmp.cmpfiles(tmp_path / "a", tmp_path / "b", files, shallow=False)
    assert not mismatch and not errors
    other = SyntheticSpec.from_data_cfg(synthetic_cfg(tmp_path / "final", seed=1))
    generate(other, tmp_path / "c", final_root=tmp_path / "final")
    first = "imagenet/val/n02883205/ILSVRC2012_val_00000001.JPEG"
    assert (tmp_path / "a" / first).read_bytes() != (tmp_path / "c" / first).read_bytes()


def test_real_readers_read_the_generated_family(tmp_path):
    cfg = synthetic_cfg(tmp_path / "syn")
    classes = ClassSpace.from_config(CLASSES)
    ensure_synthetic(cfg)
    sizes = {}
    for name in ("ImageNet2p", "ImageNet", "ImageNetV2", "ImageNetSketch", "ImageNetR", "ImageNetA", "ObjectNet"):
        ds = build_eval_dataset(name, cfg, classes)
        assert ds.num_targets == 2 and {t for _, t in ds.samples} == {0, 1}
        sizes[name] = len(ds)
        img = load_image(ds.samples[0][0], ds.border_crop)
        side = 20 if name == "ObjectNet" else 16  # ObjectNet: 16 px + a 2-px border, uncropped as published
        assert img.mode == "RGB" and img.size == (side, side)
    assert sizes == {"ImageNet2p": 4, "ImageNet": 4, "ImageNetV2": 4, "ImageNetSketch": 4,
                     "ImageNetR": 4, "ImageNetA": 4, "ObjectNet": 4}
    assert len(build_train_samples(cfg, classes)) == 6  # 3 per class left after 2 held out
    on = build_eval_dataset("ObjectNet", cfg, classes)
    assert on.info["folders"] == ["banana", "tie"]
    assert len(os.listdir(tmp_path / "syn" / "objectnet-1.0" / "images")) == 4  # + 2 unmapped folders
    reports = check_datasets(cfg)
    assert [r.status for r in reports] == ["ok"] * 7
    assert "short side 20 px" in reports[-1].message and "data.objectnet.border_crop=2" in reports[-1].message


def test_ensure_reuses_and_regenerates_on_change(tmp_path):
    cfg = synthetic_cfg(tmp_path / "syn")
    root = ensure_synthetic(cfg)
    marker = root / "synthetic.json"
    assert json.loads(marker.read_text())["seed"] == 0
    stamp = marker.stat().st_mtime_ns
    assert ensure_synthetic(cfg) == root and marker.stat().st_mtime_ns == stamp
    ensure_synthetic(synthetic_cfg(tmp_path / "syn", val_per_class=3))
    assert len(os.listdir(root / "imagenet" / "val" / CLASSES[0])) == 3
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".syn.") and "lock" not in p.name] == []


def test_pretraining_captions_csv(tmp_path):
    root = ensure_synthetic(synthetic_cfg(tmp_path / "syn"))
    with open(root / "pretrain" / "captions.csv", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    assert len(rows) == 4 and set(rows[0]) == {"filepath", "title"}
    assert all(os.path.isfile(r["filepath"]) for r in rows)
    assert all(("bow tie" in r["title"]) or ("banana" in r["title"]) for r in rows)


def test_objectnet_images_carry_a_border(tmp_path):
    root = ensure_synthetic(synthetic_cfg(tmp_path / "syn"))
    ds = build_eval_dataset("ObjectNet", synthetic_cfg(tmp_path / "syn"), ClassSpace.from_config(CLASSES))
    raw = np.asarray(load_image(ds.samples[0][0]))
    assert raw.shape == (20, 20, 3) and (raw[0] == raw[0, 0]).all() and (raw[:, -1] == raw[0, 0]).all()
    assert root.name == "syn"


def test_train_label_noise_shows_other_classes_in_train_only(tmp_path):
    classes = ["n02883205", "n02906734", "n02948072", "n07753592"]
    cfg = synthetic_cfg(tmp_path, classes=classes, train_per_class=400, val_per_class=50)
    clean, noisy = (plan(SyntheticSpec.from_data_cfg({**cfg, "synthetic": {**cfg["synthetic"], "train_label_noise": p}}))
                    for p in (0.0, 0.2))
    assert [item.key for item in clean] == [item.key for item in noisy]
    changed = [(a, b) for a, b in zip(clean, noisy, strict=True) if a.look_index != b.look_index]
    assert all(a.relpath.startswith("imagenet/train/") for a, _ in changed)
    train = [a for a in clean if a.relpath.startswith("imagenet/train/")]
    assert len(train) == 4 * 402 and 0.17 < len(changed) / len(train) < 0.23
    assert {b.look_index for _, b in changed} == {0, 1, 2, 3}


def test_class_looks_differ_without_colour():
    looks = [class_look(k) for k in range(24)]
    assert len({(look["shape"], look["texture"]) for look in looks}) == 24
    assert len({round(look["hue"], 3) for look in looks}) == 24


def test_spec_validation(tmp_path):
    from soup_exp.errors import ConfigError

    with pytest.raises(ConfigError, match="data.synthetic is not set"):
        SyntheticSpec.from_data_cfg({"synthetic": None})
    with pytest.raises(ConfigError, match="wnids"):
        SyntheticSpec.from_data_cfg(synthetic_cfg(tmp_path, classes=["banana"]))
    with pytest.raises(ConfigError, match="train_label_noise"):
        SyntheticSpec.from_data_cfg(synthetic_cfg(tmp_path, train_label_noise=1.5))
