"""`data.classes` mistakes are one-line config errors naming the entry and the nearest wnid."""

from __future__ import annotations

import pytest

from soup_exp.data.classes import ClassSpace
from soup_exp.errors import ConfigError


def test_a_typo_names_the_entry_and_the_nearest_valid_wnid():
    with pytest.raises(ConfigError) as error:
        ClassSpace.from_config(["n01440764", "n0144076"])
    message = str(error.value)
    assert "'n0144076' is not an ImageNet-1k wnid" in message
    assert "nearest valid wnid: n01440764, tench" in message and "\n" not in message
    with pytest.raises(ConfigError, match="'n99999999'.*nearest valid wnid: n"):
        ClassSpace.from_config(["n01440764", "n99999999"])


def test_a_class_name_points_to_its_wnid():
    with pytest.raises(ConfigError, match="nearest valid wnid: n01440764, class 'tench'"):
        ClassSpace.from_config(["Tench"])


@pytest.mark.parametrize(("classes", "message"), [
    ([1000], "index 1000 is out of range; ImageNet-1k indices are 0..999"),
    (["-3"], "'-3' is not an ImageNet-1k wnid"),
    ([], "data.classes is empty"),
    ("no_such_file.txt", "expected a file listing ImageNet wnids"),
])
def test_other_mistakes(classes, message):
    with pytest.raises(ConfigError, match=message):
        ClassSpace.from_config(classes)


def test_a_file_of_classes_is_named_in_its_errors(tmp_path):
    listing = tmp_path / "classes.txt"
    listing.write_text("n01440764\nn0144O764\n")
    with pytest.raises(ConfigError, match=f"data.classes file {listing}: 'n0144O764'"):
        ClassSpace.from_config(str(listing))
    listing.write_text("n01440764\n3\n")
    assert ClassSpace.from_config(str(listing)).indices == (0, 3)
