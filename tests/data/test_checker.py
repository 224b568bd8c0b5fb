import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from soup_exp.data.checker import OFFICIAL_IMAGES, check_datasets, raise_on_failure, render_table
from soup_exp.data.classes import ClassSpace
from soup_exp.data.layout import DatasetLayoutError

from .conftest import image_bytes, objectnet_tree, put


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
    raise_on_failure(list(reports.values()))  # partial: said once, in the notes under the table


def test_missing_and_malformed(data_cfg, tmp_path):
    bad = tmp_path / "v2"
    put(bad / "n01440764" / "a.jpeg")
    cfg = {**data_cfg, "roots": {**data_cfg["roots"], "ImageNetA": str(tmp_path / "nope"),
                                 "ImageNetV2": str(bad)}}
    reports = {r.name: r for r in check_datasets(cfg, ["ImageNetA", "ImageNetV2", "ImageNet2p"])}
    assert reports["ImageNetA"].status == "missing"
    assert reports["ImageNetV2"].status == "error" and "Expected tree" in reports["ImageNetV2"].message
    assert reports["ImageNetTrain"].status == "partial"  # ImageNet2p is checked as train
    with pytest.raises(DatasetLayoutError) as error:
        raise_on_failure(list(reports.values()))
    message = str(error.value)
    assert "ImageNetA (missing)" in message and "ImageNetV2 (error)" in message
    assert "Expected tree" not in message and "\n" not in message  # the table's notes hold the details


def test_subset_counts_and_unreadable_files(data_cfg, tmp_path):
    root = tmp_path / "sketch"
    shutil.copytree(Path(data_cfg["roots"]["ImageNetSketch"]) / "n01440764", root / "n01440764")
    put(root / "n01440764" / "zz.JPEG", b"garbage")
    cfg = {**data_cfg, "roots": {**data_cfg["roots"], "ImageNetSketch": str(root)}}
    (report,) = check_datasets(cfg, ["ImageNetSketch"], classes=ClassSpace.from_config([0]))
    assert report.status == "ok" and report.official_images is None and report.images == 2
    (report,) = check_datasets(cfg, ["ImageNetSketch"], classes=ClassSpace.from_config([0]), verify=True)
    assert report.status == "error" and report.unreadable == [str(root / "n01440764" / "zz.JPEG")]


@pytest.fixture
def check_data():
    """scripts/check_data.py as a module."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
    try:
        import check_data
    finally:
        sys.path.pop(0)
    return check_data


def test_script_exit_codes(check_data, tmp_path, capsys):
    assert check_data.main([f"paths.data_dir={tmp_path}", f"paths.cache_dir={tmp_path}"]) == 1
    printed = capsys.readouterr()
    assert "missing" in printed.out
    # the last line states what failed, as `soup-exp evaluate check_data=true`'s error does
    last = printed.err.strip().splitlines()[-1]
    assert last.startswith("error: dataset check failed for ImageNetTrain (missing)") and "ObjectNet (missing)" in last


def test_script_passes_a_partial_dataset_without_an_error_line(check_data, family, capsys):
    assert check_data.main(["--datasets", "ImageNetA", f"data.roots.ImageNetA={family['ImageNetA']}"]) == 0
    printed = capsys.readouterr()
    assert "| ImageNetA | partial |" in printed.out and printed.err == ""


def test_script_takes_overrides_after_dataset_names(check_data, tmp_path, capsys):
    code = check_data.main(["--datasets", "ObjectNet", "ImageNetSketch", f"paths.data_dir={tmp_path}"])
    out = capsys.readouterr().out
    assert code == 1 and "ObjectNet" in out and "ImageNetSketch" in out and "ImageNetR" not in out
    assert str(tmp_path) in out  # the override reached the config


def test_missing_roots_say_where_they_were_looked_for(data_cfg, tmp_path, monkeypatch):
    monkeypatch.delenv("SOUP_ROOT")
    cfg = {**data_cfg, "roots": {**data_cfg["roots"], "ImageNetA": str(tmp_path / "data" / "imagenet-a")}}
    reports = check_datasets(cfg, ["ImageNetA", "ImageNetR"])
    table = render_table(reports, data_dir=str(tmp_path / "data"))
    assert f"paths.data_dir={tmp_path / 'data'} (the default: ./data under the current directory)" in table
    assert "SOUP_DATA_DIR=/path/to/datasets" in table
    assert "paths.data_dir" not in render_table(reports)  # no data_dir given: no hint
    monkeypatch.setenv("SOUP_DATA_DIR", str(tmp_path / "data"))
    assert "(set by SOUP_DATA_DIR)" in render_table(reports, data_dir=str(tmp_path / "data"))


def test_data_check_prints_each_problem_once_and_creates_nothing(tmp_path):
    """`soup-exp evaluate check_data=true` in an empty folder: the table, one note per
    dataset, the data-dir hint, a one-line error; no outputs/ folder (a read-only check)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOUP_")}
    (tmp_path / "data" / "imagenet-r").mkdir(parents=True)  # present but empty: an error
    result = subprocess.run([sys.executable, "-m", "soup_exp.cli", "evaluate", "check_data=true",
                             f"paths.cache_dir={tmp_path / 'cache'}"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    out = result.stdout + result.stderr
    assert out.count("ImageNetA (missing): root") == 1
    assert out.count("imagenet-r holds no sub-folders") == 1 and out.count("Expected tree") == 1
    assert out.count("the default: ./data under the current directory") == 1
    assert "WARNING" not in out and "Traceback" not in out
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "ImageNetA (missing)" in errors[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_small_objectnet_images_point_to_the_border_crop(data_cfg, tmp_path):
    """Issue 24 item 10: on small images ObjectNet's 2-px border is a large part of each
    image; the check says so and names data.objectnet.border_crop, unless it is already set."""
    root = objectnet_tree(tmp_path / "objectnet-1.0", image_bytes("PNG", size=36))  # the demo's size
    cfg = {**data_cfg, "roots": {**data_cfg["roots"], "ObjectNet": str(root)}}
    (report,) = check_datasets(cfg, ["ObjectNet"])
    assert report.status == "partial"  # a note, not a failure
    assert "short side 36 px" in report.message and "11 % of their width and height" in report.message
    assert "set data.objectnet.border_crop=2 to cut it off every side before preprocessing (now 0" in report.message
    assert "data.objectnet.border_crop" in render_table([report])
    (report,) = check_datasets({**cfg, "objectnet": {"border_crop": 2}}, ["ObjectNet"])
    assert "border_crop" not in report.message
    large = objectnet_tree(tmp_path / "large" / "objectnet-1.0", image_bytes("PNG", size=64))
    (report,) = check_datasets({**cfg, "roots": {**cfg["roots"], "ObjectNet": str(large)}}, ["ObjectNet"])
    assert report.message == "113 images where the official release has 18,574"
