"""Miniature trees in each real dataset layout (all class folders the real one has, one
tiny image each, a few more where a test needs them)."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import pytest
from PIL import Image

from soup_exp.data.classes import imagenet_wnids, timm_index_list
from soup_exp.data.objectnet import PACKAGE_MAPPINGS, read_objectnet_mapping
from soup_exp.utils.io import read_json


def image_bytes(fmt: str = "JPEG", size: int = 8, colour=(200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buffer, format=fmt)
    return buffer.getvalue()


JPEG = image_bytes("JPEG")
PNG = image_bytes("PNG")


def put(path: Path, data: bytes = JPEG) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def wnid_tree(root: Path, wnids, name="img_{i}.JPEG", per_class: int = 1) -> Path:
    for w in wnids:
        for i in range(per_class):
            put(root / w / name.format(w=w, i=i))
    return root


def build_family(root: Path) -> dict[str, Path]:
    """ImageNet val, V2, Sketch, R, A and ObjectNet in their real layouts."""
    wnids = imagenet_wnids()
    roots = {
        "ImageNet": root / "imagenet",
        "ImageNetV2": root / "imagenetv2-matched-frequency-format-val",
        "ImageNetSketch": root / "sketch",
        "ImageNetR": root / "imagenet-r",
        "ImageNetA": root / "imagenet-a",
        "ObjectNet": root / "objectnet-1.0",
    }
    for i, w in enumerate(wnids):
        put(roots["ImageNet"] / "val" / w / f"ILSVRC2012_val_{1001 + i:08d}.JPEG")
    # ReaL needs official val names: give the first class two of them.
    put(roots["ImageNet"] / "val" / wnids[0] / "ILSVRC2012_val_00000002.JPEG")
    put(roots["ImageNet"] / "val" / wnids[0] / "ILSVRC2012_val_00000001.JPEG")
    wnid_tree(roots["ImageNet"] / "train", wnids, "{w}_{i}.JPEG")
    for i in range(1000):
        put(roots["ImageNetV2"] / str(i) / f"{i:040x}.jpeg")
    wnid_tree(roots["ImageNetSketch"], wnids, "sketch_{i}.JPEG")
    wnid_tree(roots["ImageNetR"], [wnids[i] for i in timm_index_list("imagenet_r_indices.txt")], "art_{i}.jpg")
    wnid_tree(roots["ImageNetA"], [wnids[i] for i in timm_index_list("imagenet_a_indices.txt")], "{i}.jpg")
    objectnet_tree(roots["ObjectNet"])
    return roots


def objectnet_tree(root: Path, image: bytes = PNG) -> Path:
    """ObjectNet in its real layout: every folder with one ``image``, and the mapping files."""
    for folder in read_json(PACKAGE_MAPPINGS / "folder_to_objectnet_label.json"):
        put(root / "images" / folder / "0.png", image)
    shutil.copytree(PACKAGE_MAPPINGS, root / "mappings")
    return root


@pytest.fixture(scope="session")
def family(tmp_path_factory) -> dict[str, Path]:
    return build_family(tmp_path_factory.mktemp("family"))


@pytest.fixture
def data_cfg(family, tmp_path):
    return {"classes": None, "roots": {k: str(v) for k, v in family.items()},
            "heldout": {"per_class": 1, "seed": 0, "index_file": None, "index_file_lists": "heldout",
                        "authors_check": True, "split_dir": str(tmp_path / "splits")},
            "objectnet": {"border_crop": 0}}


@pytest.fixture(scope="session")
def objectnet_mapping():
    return read_objectnet_mapping(PACKAGE_MAPPINGS)
