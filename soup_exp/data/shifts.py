"""ImageNetV2, ImageNet-Sketch, ImageNet-R and ImageNet-A, each in its download's layout.

V2 and Sketch cover all 1000 classes and score the model's logits as they are.
ImageNet-R and ImageNet-A cover 200 classes each: their targets are those classes in
timm's order, and the projection keeps only the matching model columns.
"""

from __future__ import annotations

import os

from soup_exp.data.base import LabeledImages, LogitProjection
from soup_exp.data.classes import ClassSpace, imagenet_wnids, timm_index_list
from soup_exp.data.imagenet import scan_wnid_folders, wnid_samples
from soup_exp.data.layout import DatasetLayoutError, scan_class_folders

V2_TREE = """\
<data.roots.ImageNetV2>/      (imagenetv2-matched-frequency-format-val)
  0/    7e1e5f0f0f4f....jpeg ...     folders named by ImageNet class index, 0..999
  1/
  ...
  999/                                10 images each, 10,000 in all"""

SKETCH_TREE = """\
<data.roots.ImageNetSketch>/  (sketch)
  n01440764/  sketch_0.JPEG sketch_1.JPEG ...   1000 wnid folders, 50,889 images
  ..."""

R_TREE = """\
<data.roots.ImageNetR>/       (imagenet-r)
  n01443537/  art_0.jpg ...             200 wnid folders (timm imagenet_r_synsets.txt), 30,000 images
  ..."""

A_TREE = """\
<data.roots.ImageNetA>/       (imagenet-a)
  n01498041/  0.000116_digital clock _ digital clock_0.865662.jpg ...
  ...                                   200 wnid folders (timm imagenet_a_synsets.txt), 7,500 images"""


def scan_v2(root: str | os.PathLike, classes: ClassSpace):
    return scan_class_folders(root, [str(i) for i in classes.indices], dataset="ImageNetV2",
                              tree=V2_TREE, kind="index")


def read_imagenet_v2(root: str | os.PathLike, classes: ClassSpace) -> LabeledImages:
    """ImageNetV2 matched-frequency: folder ``k`` holds ImageNet class ``k`` (not sorted as text)."""
    scan = scan_v2(root, classes).require_complete()
    samples = []
    for folder in scan.expected:
        column = classes.local_index(int(folder))
        samples.extend((p, column) for p in scan.images[folder])
    return LabeledImages(name="ImageNetV2", samples=samples, num_targets=classes.num_classes,
                         root=str(root))


def scan_sketch(root: str | os.PathLike, classes: ClassSpace):
    return scan_wnid_folders(root, classes, dataset="ImageNetSketch", tree=SKETCH_TREE)


def read_imagenet_sketch(root: str | os.PathLike, classes: ClassSpace) -> LabeledImages:
    scan = scan_sketch(root, classes).require_complete()
    return LabeledImages(name="ImageNetSketch", samples=wnid_samples(scan, classes),
                         num_targets=classes.num_classes, root=str(root))


# result key -> (timm index list, expected tree)
SUBSET_SHIFTS: dict[str, tuple[str, str]] = {
    "ImageNetR": ("imagenet_r_indices.txt", R_TREE),
    "ImageNetA": ("imagenet_a_indices.txt", A_TREE),
}


def subset_shift_indices(name: str, classes: ClassSpace) -> list[int]:
    """The dataset's ImageNet indices (timm's order) that the ClassSpace also predicts."""
    index_file, _ = SUBSET_SHIFTS[name]
    kept = [i for i in timm_index_list(index_file) if classes.local_index(i) is not None]
    if not kept:
        raise DatasetLayoutError(
            f"{name}: none of its 200 classes is in data.classes; drop {name} from "
            "eval.datasets or choose classes it covers"
        )
    return kept


def scan_subset_shift(name: str, root: str | os.PathLike, classes: ClassSpace):
    wnids = imagenet_wnids()
    expected = [wnids[i] for i in subset_shift_indices(name, classes)]
    return scan_wnid_folders(root, classes, dataset=name, tree=SUBSET_SHIFTS[name][1],
                             expected=expected)


def read_subset_shift(name: str, root: str | os.PathLike, classes: ClassSpace) -> LabeledImages:
    """ImageNet-R / ImageNet-A: target ``t`` is the t-th kept class; projection selects its column."""
    indices = subset_shift_indices(name, classes)
    scan = scan_subset_shift(name, root, classes).require_complete()
    samples = []
    for target, wnid in enumerate(scan.expected):
        samples.extend((p, target) for p in scan.images[wnid])
    projection = LogitProjection.select([classes.local_index(i) for i in indices])
    return LabeledImages(name=name, samples=samples, num_targets=len(indices),
                         projection=projection, root=str(root),
                         info={"imagenet_indices": indices})


def read_imagenet_r(root: str | os.PathLike, classes: ClassSpace) -> LabeledImages:
    return read_subset_shift("ImageNetR", root, classes)


def read_imagenet_a(root: str | os.PathLike, classes: ClassSpace) -> LabeledImages:
    return read_subset_shift("ImageNetA", root, classes)
