"""Dataset name -> root folder is resolved by the data registry alone; preflight asks it."""

import pytest
from omegaconf import OmegaConf

from soup_exp.data.layout import DatasetLayoutError
from soup_exp.data.registry import EVAL_DATASETS, dataset_folder, root_key
from soup_exp.stages import preflight
from soup_exp.vocabulary import HELD_OUT


def data_cfg(tmp_path):
    return OmegaConf.create({"data": {
        "roots": {"ImageNet": str(tmp_path / "in"), "ObjectNet": str(tmp_path / "on"), "ImageNetA": None},
        "datasets": {"Mine": {"root": str(tmp_path / "mine")}, "Made": {"_target_": "my.reader"},
                     "ObjectNet": {"root": "/not/this/one"}},
        "heldout": {"index_file": None, "per_class": 2, "seed": 0},
    }})


def test_each_kind_of_dataset_has_its_folder(tmp_path):
    data = data_cfg(tmp_path).data
    assert dataset_folder(data, HELD_OUT) == dataset_folder(data, "train") == str(tmp_path / "in" / "train")
    assert dataset_folder(data, "ImageNet") == dataset_folder(data, "ImageNetReal") == str(tmp_path / "in")
    assert dataset_folder(data, "ObjectNet") == str(tmp_path / "on")  # a built-in wins, as the registry builds it
    assert dataset_folder(data, "Mine") == str(tmp_path / "mine")
    assert dataset_folder(data, "Made") is None and dataset_folder(data, "ImageNetA") is None
    assert root_key("ImageNetTrain") == "ImageNet"  # check_data asks it too
    assert {root_key(name) for name in EVAL_DATASETS} == {
        "ImageNet", "ImageNetV2", "ImageNetSketch", "ImageNetR", "ImageNetA", "ObjectNet"}


def test_preflight_asks_the_registry(tmp_path, monkeypatch):
    cfg = data_cfg(tmp_path)
    names = [HELD_OUT, "ImageNetReal", "ObjectNet", "Mine", "Made"]
    asked = []

    def folder(data, name):
        asked.append(name)
        return str(tmp_path / f"asked-{name}")

    monkeypatch.setattr("soup_exp.data.registry.dataset_folder", folder)
    assert preflight.dataset_roots(cfg, names) == [(n, str(tmp_path / f"asked-{n}")) for n in names]
    lines = preflight.dataset_lines(cfg, names)
    assert lines[1:3] == [f"ImageNetReal: {tmp_path}/asked-ImageNetReal  [missing]",
                          f"ObjectNet: {tmp_path}/asked-ObjectNet  [missing]"]
    assert str(tmp_path / f"asked-{HELD_OUT}") in lines[0]
    (tmp_path / "asked-Mine").mkdir()
    with pytest.raises(DatasetLayoutError) as error:
        preflight.require_roots(OmegaConf.merge(cfg, {"paths": {"data_dir": str(tmp_path)}}), names)
    assert "Mine" not in str(error.value) and f"ObjectNet ({tmp_path}/asked-ObjectNet)" in str(error.value)
