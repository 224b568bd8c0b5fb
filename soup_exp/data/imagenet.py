"""ImageNet-1k train/val in the ImageFolder layout (``train/<wnid>/``, ``val/<wnid>/``).

Labels come from the wnid of each folder, never from a folder's position, so a missing
folder cannot silently shift every label after it (the classic ImageFolder pitfall).
The train listing keeps ImageFolder's exact order (sorted folders, sorted files): index
files such as the authors' ``imagenet_98_idxs.npy`` are positions in that order.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from soup_exp.data.base import LabeledImages
from soup_exp.data.classes import ClassSpace, _timm_info_file, wnid_to_index
from soup_exp.data.layout import (
    DatasetLayoutError,
    FolderScan,
    list_images,
    require_dir,
    scan_class_folders,
    subfolders,
)

IMAGENET_TREE = """\
<data.roots.ImageNet>/
  train/
    n01440764/  n01440764_10026.JPEG ...     1000 wnid folders, 1,281,167 images
    ...
  val/
    n01440764/  ILSVRC2012_val_00000293.JPEG ...   1000 wnid folders, 50,000 images
    ...
(val/ must be sorted into wnid folders, e.g. with the usual valprep.sh script)"""

SPLITS = ("train", "val")


def split_root(root: str | os.PathLike, split: str) -> Path:
    if split not in SPLITS:
        raise ValueError(f"ImageNet split must be one of {SPLITS}, got {split!r}")
    root = Path(root)
    require_dir(root, "ImageNet", IMAGENET_TREE)
    path = root / split
    require_dir(path, "ImageNet", IMAGENET_TREE, what=f"{split}/ folder")
    return path


def scan_wnid_folders(root: str | os.PathLike, classes: ClassSpace, *, dataset: str,
                      tree: str, expected: list[str] | None = None) -> FolderScan:
    """Scan a ``<root>/<wnid>/`` tree for the wnids of ``classes`` (or ``expected``)."""
    return scan_class_folders(root, classes.wnids if expected is None else expected,
                              dataset=dataset, tree=tree, kind="wnid")


def wnid_samples(scan: FolderScan, classes: ClassSpace) -> list[tuple[str, int]]:
    """(path, ClassSpace column) for every image of the scanned wnid folders, in order."""
    lookup = wnid_to_index()
    samples = []
    for wnid in scan.expected:
        column = classes.local_index(lookup[wnid])
        samples.extend((p, column) for p in scan.images.get(wnid, ()))
    return samples


def read_imagenet_val(root: str | os.PathLike, classes: ClassSpace) -> LabeledImages:
    """ImageNet val (result key ``ImageNet``): targets are ClassSpace columns."""
    val = split_root(root, "val")
    scan = scan_wnid_folders(val, classes, dataset="ImageNet", tree=IMAGENET_TREE).require_complete()
    return LabeledImages(name="ImageNet", samples=wnid_samples(scan, classes),
                         num_targets=classes.num_classes, root=str(val))


@dataclass(frozen=True)
class TrainListing:
    """Every image of ``train/`` in ImageFolder order, with its ImageNet index.

    ``relpaths`` are relative to ``root`` with ``/`` separators; positions in this list
    are what held-out index files refer to.
    """

    root: Path
    relpaths: tuple[str, ...]
    imagenet_labels: np.ndarray

    def __len__(self) -> int:
        return len(self.relpaths)

    def path(self, i: int) -> str:
        return str(self.root / self.relpaths[i])


def list_train(root: str | os.PathLike, classes: ClassSpace) -> TrainListing:
    """List all wnid folders present under ``train/``; the ClassSpace's must be complete."""
    train = split_root(root, "train")
    scan = scan_wnid_folders(train, classes, dataset="ImageNet", tree=IMAGENET_TREE)
    scan.require_complete()
    lookup = wnid_to_index()
    present = [f for f in subfolders(train) if f in lookup]
    relpaths, labels = [], []
    for wnid in present:
        files = scan.images.get(wnid) or list_images(train / wnid)
        relpaths.extend(f"{wnid}/{os.path.basename(p)}" for p in files)
        labels.extend([lookup[wnid]] * len(files))
    return TrainListing(root=train, relpaths=tuple(relpaths),
                        imagenet_labels=np.asarray(labels, dtype=np.int64))


def listing_samples(listing: TrainListing, positions, classes: ClassSpace) -> list[tuple[str, int]]:
    """(path, ClassSpace column) for the given listing positions whose class is in ``classes``."""
    samples = []
    for i in positions:
        column = classes.local_index(int(listing.imagenet_labels[i]))
        if column is not None:
            samples.append((listing.path(int(i)), column))
    return samples


@functools.cache
def real_label_sets() -> tuple[tuple[int, ...], ...]:
    """ImageNet-ReaL label sets (Beyer et al. 2020) for val images 1..50000, from timm."""
    raw = json.loads(_timm_info_file("imagenet_real_labels.json").read_text())
    return tuple(tuple(int(x) for x in labels) for labels in raw)


def read_imagenet_real(root: str | os.PathLike, classes: ClassSpace) -> LabeledImages:
    """ImageNet val relabelled with ReaL (result key ``ImageNetReal``).

    ReaL is multi-label. Images without any ReaL label are skipped, as in the ReaL
    protocol. Each image's single target is its original label when ReaL keeps it, else
    its first ReaL label; the full label sets (ClassSpace columns) are in
    ``info["label_sets"]`` for evaluators that score "prediction in set".
    """
    val = read_imagenet_val(root, classes)
    label_sets = real_label_sets()
    samples, sets = [], []
    for path, target in val.samples:
        index = _val_image_number(path) - 1
        columns = [c for c in (classes.local_index(i) for i in label_sets[index]) if c is not None]
        if not columns:
            continue
        samples.append((path, target if target in columns else columns[0]))
        sets.append(columns)
    return LabeledImages(name="ImageNetReal", samples=samples, num_targets=classes.num_classes,
                         root=val.root, info={"label_sets": sets})


def _val_image_number(path: str) -> int:
    stem = os.path.splitext(os.path.basename(path))[0]
    try:
        number = int(stem.rsplit("_", 1)[1])
    except (IndexError, ValueError):
        number = 0
    if not 1 <= number <= 50000:
        raise DatasetLayoutError(
            f"ImageNetReal: {path} is not named ILSVRC2012_val_<8 digits>.JPEG; ReaL labels "
            "are matched by the official val file names"
        )
    return number
