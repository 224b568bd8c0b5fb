import shutil
import sys
from pathlib import Path

from soup_exp.data.checker import OFFICIAL_IMAGES, check_datasets, raise_on_failure, render_table
from soup_exp.data.classes import ClassSpace
from soup_exp.data.layout import DatasetLayoutError

from .conftest import put


def test_full_trees_are_partial_against_official_counts(data_cfg):
    reports = {r.name: r for r in check_datasets(data_cfg)}
    assert list(reports) == ["ImageNetTrain", "ImageNet", "ImageNetV2", "ImageNetSketch",
                             "ImageNetR", "ImageNetA", "ObjectNet"]
    assert (reports["ImageNetR"].classes_found, reports["ImageNetR"].classes_expected) == (200, 200)
    assert (reports["ObjectNet"].classes_found, reports["ObjectNet"].images) == (113, 113)
    assert reports["ImageNet"].images == 1002
    assert all(r.status == "partial" for r in reports.values())
    assert reports["ImageNetSketch"].official_images == OFFICIAL_IMAGES["ImageNetSketch"] == 50_889
    table = render_table(reports.values())
    assert "| ImageNetA | partial | 200/200 | 200 | 7,500 |" in table
    raise_on_failure(list(reports.values()))  # partial only warns


def test_missing_and_malformed(data_cfg, tmp_path):
    bad = tmp_path / "v2"
    put(bad / "n01440764" / "a.jpeg")
    cfg = {**data_cfg, "roots": {**data_cfg["roots"], "ImageNetA": str(tmp_path / "nope"),
                                 "ImageNetV2": str(bad)}}
    reports = {r.name: r for r in check_datasets(cfg, ["ImageNetA", "ImageNetV2", "ImageNet2p"])}
    assert reports["ImageNetA"].status == "missing"
    assert reports["ImageNetV2"].status == "error" and "Expected tree" in reports["ImageNetV2"].message
    assert reports["ImageNetTrain"].status == "partial"  # ImageNet2p is checked as train
    try:
        raise_on_failure(list(reports.values()))
    except DatasetLayoutError as err:
        assert "ImageNetA (missing)" in str(err) and "ImageNetV2 (error)" in str(err)
    else:
        raise AssertionError("expected a failure")


def test_subset_counts_and_unreadable_files(data_cfg, tmp_path):
    root = tmp_path / "sketch"
    shutil.copytree(Path(data_cfg["roots"]["ImageNetSketch"]) / "n01440764", root / "n01440764")
    put(root / "n01440764" / "zz.JPEG", b"garbage")
    cfg = {**data_cfg, "roots": {**data_cfg["roots"], "ImageNetSketch": str(root)}}
    (report,) = check_datasets(cfg, ["ImageNetSketch"], classes=ClassSpace.from_config([0]))
    assert report.status == "ok" and report.official_images is None and report.images == 2
    (report,) = check_datasets(cfg, ["ImageNetSketch"], classes=ClassSpace.from_config([0]), verify=True)
    assert report.status == "error" and report.unreadable == [str(root / "n01440764" / "zz.JPEG")]


def test_script_exit_codes(tmp_path, capsys):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
    try:
        import check_data
    finally:
        sys.path.pop(0)
    assert check_data.main([f"paths.data_dir={tmp_path}", f"paths.cache_dir={tmp_path}"]) == 1
    assert "missing" in capsys.readouterr().out


def test_script_takes_overrides_after_dataset_names(tmp_path, capsys):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
    try:
        import check_data
    finally:
        sys.path.pop(0)
    code = check_data.main(["--datasets", "ObjectNet", "ImageNetSketch", f"paths.data_dir={tmp_path}"])
    out = capsys.readouterr().out
    assert code == 1 and "ObjectNet" in out and "ImageNetSketch" in out and "ImageNetR" not in out
    assert str(tmp_path) in out  # the override reached the config
