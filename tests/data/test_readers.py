import os

import pytest
import torch

from soup_exp.data.classes import ClassSpace, imagenet_wnids, timm_index_list
from soup_exp.data.registry import EVAL_DATASETS, build_eval_dataset, class_space
from soup_exp.errors import ConfigError

from .conftest import put


def folder_of(path):
    return os.path.basename(os.path.dirname(path))


def test_imagenet_val_labels_come_from_wnids(data_cfg):
    ds = build_eval_dataset("ImageNet", data_cfg, ClassSpace.full())
    wnids = imagenet_wnids()
    assert ds.name == "ImageNet" and ds.num_targets == 1000 and ds.projection is None
    assert len(ds) == 1002 and ds.border_crop == 0
    assert all(wnids[t] == folder_of(p) for p, t in ds.samples)
    first_class = [os.path.basename(p) for p, t in ds.samples if t == 0]
    assert first_class == sorted(first_class)


def test_extensions_are_case_insensitive_and_others_ignored(family, data_cfg, tmp_path):
    folder = family["ImageNetSketch"] / imagenet_wnids()[5]
    extra = [put(folder / n) for n in ("a.jpg", "b.JPG", "c.jpeg", "d.PNG")]
    (folder / "notes.txt").write_text("not an image")
    try:
        ds = build_eval_dataset("ImageNetSketch", data_cfg, ClassSpace.full())
        names = [os.path.basename(p) for p, t in ds.samples if t == 5]
        assert names == ["a.jpg", "b.JPG", "c.jpeg", "d.PNG", "sketch_0.JPEG"]
        assert ds.name == "ImageNetSketch" and ds.projection is None
    finally:
        for p in extra:
            p.unlink()
        (folder / "notes.txt").unlink()


def test_v2_folders_are_numeric_class_indices(data_cfg):
    ds = build_eval_dataset("ImageNetV2", data_cfg, ClassSpace.full())
    assert len(ds) == 1000 and ds.num_targets == 1000
    # folder "10" is class 10 even though "10" sorts before "2" as text
    assert all(int(folder_of(p)) == t for p, t in ds.samples)


@pytest.mark.parametrize("name,index_file", [("ImageNetR", "imagenet_r_indices.txt"),
                                             ("ImageNetA", "imagenet_a_indices.txt")])
def test_r_and_a_keep_their_200_columns(data_cfg, name, index_file):
    ds = build_eval_dataset(name, data_cfg, ClassSpace.full())
    indices = timm_index_list(index_file)
    wnids = imagenet_wnids()
    assert ds.name == name and ds.num_targets == 200 and len(ds) == 200
    assert [g[0] for g in ds.projection.groups] == list(indices)
    assert all(wnids[indices[t]] == folder_of(p) for p, t in ds.samples)
    # a model whose logits favour each image's true ImageNet class gets 100%, and a model
    # favouring a class outside the 200 is ignored by the projection
    logits = torch.zeros(len(ds), 1000)
    for row, (_, t) in enumerate(ds.samples):
        logits[row, indices[t]] = 5.0
        logits[row, 0 if 0 not in indices else 3] = 9.0
    assert torch.equal(ds.project(logits).argmax(1), ds.targets)


def test_objectnet_uses_real_mapping(data_cfg, objectnet_mapping):
    ds = build_eval_dataset("ObjectNet", data_cfg, ClassSpace.full())
    assert ds.name == "ObjectNet" and ds.border_crop == 0  # as published: the authors' crop never ran
    assert ds.num_targets == 113 and len(ds) == 113  # 313 folders on disk, 113 mapped
    assert len({i for g in ds.projection.groups for i in g}) == 125
    folders = ds.info["folders"]
    assert folders == sorted(folders) and "squeegee" not in folders
    groups = dict(zip(folders, ds.projection.groups, strict=True))
    assert sorted(groups["chair"]) == [423, 559, 765]  # barber, folding, rocking chair
    assert sorted(groups["alarm_clock"]) == [409, 530]  # analog, digital clock
    # many-to-one max: the folding-chair logit wins the "chair" target
    logits = torch.zeros(1, 1000)
    logits[0, 559] = 3.0
    logits[0, 954] = 2.0  # banana
    assert folders[ds.project(logits).argmax(1).item()] == "chair"


def test_border_crop_is_one_objectnet_override(data_cfg):
    def crops(cfg):
        return {n: build_eval_dataset(n, cfg, ClassSpace.full()).border_crop
                for n in EVAL_DATASETS if n not in ("ImageNet2p",)}

    assert set(crops(data_cfg).values()) == {0}  # the paper preset: no set is cropped
    readme = crops({**data_cfg, "objectnet": {"border_crop": 2}})
    assert readme.pop("ObjectNet") == 2 and set(readme.values()) == {0}
    with pytest.raises(ConfigError, match="border_crop=-1"):
        build_eval_dataset("ObjectNet", {**data_cfg, "objectnet": {"border_crop": -1}}, ClassSpace.full())


def test_paper_config_evaluates_objectnet_uncropped():
    from hydra import compose, initialize_config_dir

    from soup_exp.stages.entry import packaged_config_dir

    with initialize_config_dir(config_dir=str(packaged_config_dir()), version_base="1.3"):
        assert compose(config_name="evaluate").data.objectnet.border_crop == 0
        cropped = compose(config_name="evaluate", overrides=["data.objectnet.border_crop=2"])
    assert cropped.data.objectnet.border_crop == 2


def test_class_subset_maps_to_local_columns(data_cfg):
    wnids = imagenet_wnids()
    subset = ClassSpace.from_config([wnids[954], wnids[457], wnids[906], wnids[0]])  # banana, bow tie, Windsor tie, tench
    val = build_eval_dataset("ImageNet", data_cfg, subset)
    assert val.num_targets == 4 and {t for _, t in val.samples} == {0, 1, 2, 3}
    assert all(wnids[subset.indices[t]] == folder_of(p) for p, t in val.samples)
    r = build_eval_dataset("ImageNetR", data_cfg, subset)
    r_indices = set(timm_index_list("imagenet_r_indices.txt"))
    kept = [i for i in subset.indices if i in r_indices]
    assert r.num_targets == len(kept)
    assert [g[0] for g in r.projection.groups] == [subset.local_index(i) for i in kept]
    on = build_eval_dataset("ObjectNet", data_cfg, subset)
    groups = dict(zip(on.info["folders"], on.projection.groups, strict=True))
    assert groups == {"banana": (subset.local_index(954),),
                      "tie": (subset.local_index(457), subset.local_index(906))}
    v2 = build_eval_dataset("ImageNetV2", data_cfg, subset)
    assert sorted(int(folder_of(p)) for p, _ in v2.samples) == list(subset.indices)


def test_class_space_from_config(data_cfg):
    assert class_space(data_cfg).is_full
    assert class_space({**data_cfg, "classes": ["n01440764", 5]}).indices == (0, 5)


def test_imagenet_real_skips_unlabelled_and_keeps_sets(data_cfg):
    ds = build_eval_dataset("ImageNetReal", data_cfg, ClassSpace.full())
    names = {os.path.basename(p): t for p, t in ds.samples}
    # val image 1 has no ReaL label; image 2's ReaL labels are {970, 795}; the file sits
    # in class 0's folder, which ReaL does not keep, so the first ReaL label is the target
    assert "ILSVRC2012_val_00000001.JPEG" not in names
    assert names["ILSVRC2012_val_00000002.JPEG"] == 970
    row = [os.path.basename(p) for p, _ in ds.samples].index("ILSVRC2012_val_00000002.JPEG")
    assert ds.info["label_sets"][row] == [970, 795]
    assert len(ds.info["label_sets"]) == len(ds) < 1002


def test_mapped_folders_extra(tmp_path):
    root = tmp_path / "mine"
    put(root / "kitty" / "a.jpg")
    put(root / "doggo" / "b.jpg")
    put(root / "doggo" / "c.jpg")
    cfg = {"roots": {}, "datasets": {"Mine": {"root": str(root),
                                              "mapping": {"kitty": [281, "n02123159"], "doggo": 207}}}}
    ds = build_eval_dataset("Mine", cfg, ClassSpace.full())
    assert ds.info["folders"] == ["doggo", "kitty"] and [t for _, t in ds.samples] == [0, 0, 1]
    assert ds.projection.groups == ((207,), (281, 282))
