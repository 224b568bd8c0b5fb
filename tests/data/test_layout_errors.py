"""Each malformed layout gives a DatasetLayoutError naming the path and the expected tree."""

import shutil

import pytest

from soup_exp.data.classes import ClassSpace, imagenet_wnids
from soup_exp.data.layout import DatasetLayoutError
from soup_exp.data.objectnet import read_objectnet
from soup_exp.data.registry import build_eval_dataset
from soup_exp.data.shifts import read_imagenet_sketch, read_imagenet_v2
from soup_exp.errors import ConfigError, SoupExpError

from .conftest import put, wnid_tree

FEW = ClassSpace.from_config([0, 1, 2])


def test_missing_root(tmp_path):
    with pytest.raises(DatasetLayoutError, match=r"(?s)ImageNetV2: dataset root .*nowhere does not exist.*Expected tree"):
        read_imagenet_v2(tmp_path / "nowhere", FEW)


def test_wnid_folders_where_indices_expected(tmp_path):
    wnid_tree(tmp_path, FEW.wnids)
    with pytest.raises(DatasetLayoutError, match=r"(?s)wnid folders.*class-index folders.*0/ .. 999/"):
        read_imagenet_v2(tmp_path, FEW)


def test_index_folders_where_wnids_expected(tmp_path):
    for i in range(3):
        put(tmp_path / str(i) / "a.jpeg")
    with pytest.raises(DatasetLayoutError, match="looks like ImageNetV2"):
        read_imagenet_sketch(tmp_path, FEW)


def test_empty_class_folder(tmp_path):
    wnid_tree(tmp_path, FEW.wnids[:2])
    (tmp_path / FEW.wnids[2]).mkdir()
    (tmp_path / FEW.wnids[2] / "readme.txt").write_text("x")
    with pytest.raises(DatasetLayoutError, match=rf"(?s)1 class folder\(s\) hold no images.*{FEW.wnids[2]}.*Expected tree"):
        read_imagenet_sketch(tmp_path, FEW)


def test_missing_class_folder_suggests_subset(tmp_path):
    wnid_tree(tmp_path, FEW.wnids[:2])
    with pytest.raises(DatasetLayoutError, match=r"(?s)1 class folder\(s\) missing.*data.classes"):
        read_imagenet_sketch(tmp_path, FEW)


def test_root_one_level_too_high(tmp_path):
    wnid_tree(tmp_path / "sketch", FEW.wnids)
    with pytest.raises(DatasetLayoutError, match="did you mean .*sketch"):
        read_imagenet_sketch(tmp_path, FEW)


def test_flat_val_folder(tmp_path):
    wnid_tree(tmp_path / "imagenet" / "train", FEW.wnids)
    put(tmp_path / "imagenet" / "val" / "ILSVRC2012_val_00000001.JPEG")
    cfg = {"roots": {"ImageNet": str(tmp_path / "imagenet")}}
    with pytest.raises(DatasetLayoutError, match="images lie directly in the root"):
        build_eval_dataset("ImageNet", cfg, FEW)


def test_missing_val_split(tmp_path):
    wnid_tree(tmp_path / "imagenet" / "train", FEW.wnids)
    cfg = {"roots": {"ImageNet": str(tmp_path / "imagenet")}}
    with pytest.raises(DatasetLayoutError, match="val/ folder .* does not exist"):
        build_eval_dataset("ImageNet", cfg, FEW)


def test_objectnet_missing_mapping_file(family, tmp_path):
    root = tmp_path / "objectnet-1.0"
    shutil.copytree(family["ObjectNet"] / "mappings", root / "mappings")
    put(root / "images" / "banana" / "a.png")
    (root / "mappings" / "imagenet_to_label_2012_v2").unlink()
    with pytest.raises(DatasetLayoutError, match=r"(?s)imagenet_to_label_2012_v2 missing.*mappings/"):
        read_objectnet(root, ClassSpace.full())


def test_objectnet_missing_images_folder(family, tmp_path):
    root = tmp_path / "objectnet-1.0"
    shutil.copytree(family["ObjectNet"] / "mappings", root / "mappings")
    with pytest.raises(DatasetLayoutError, match="images/ folder"):
        read_objectnet(root, ClassSpace.from_config([954]))


def test_unset_root_and_unknown_dataset():
    with pytest.raises(ConfigError, match="data.roots.ImageNetA is not set"):
        build_eval_dataset("ImageNetA", {"roots": {}}, FEW)
    with pytest.raises(ConfigError, match="unknown evaluation dataset 'ImageNetZ'"):
        build_eval_dataset("ImageNetZ", {"roots": {}}, FEW)


def test_errors_are_user_errors():
    assert issubclass(DatasetLayoutError, SoupExpError) and issubclass(DatasetLayoutError, ValueError)


def test_shift_without_any_class_in_subset(tmp_path):
    tench = ClassSpace.from_config([imagenet_wnids()[0]])  # not in ImageNet-R's 200
    with pytest.raises(DatasetLayoutError, match="none of its 200 classes"):
        build_eval_dataset("ImageNetR", {"roots": {"ImageNetR": str(tmp_path)}}, tench)


def test_sketch_tree_shows_the_release_file_names(tmp_path):
    wnid_tree(tmp_path, FEW.wnids[:2])
    with pytest.raises(DatasetLayoutError, match=r"n01440764/  sketch_0\.JPEG sketch_1\.JPEG"):
        read_imagenet_sketch(tmp_path, FEW)


def test_a_missing_root_says_where_the_default_is_and_how_to_move_it(tmp_path):
    with pytest.raises(DatasetLayoutError) as error:
        read_imagenet_sketch(tmp_path / "nope", FEW)
    assert "SOUP_DATA_DIR" in str(error.value) and "./data under the current directory" in str(error.value)
