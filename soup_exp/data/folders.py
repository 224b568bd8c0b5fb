"""Any ImageFolder-style dataset whose folders map to ImageNet classes (a user's dataset).

A user's own shift set is ``<root>/<folder>/<images>`` plus a mapping from each folder to
one or more ImageNet classes (wnids or indices), given inline or as a JSON file. With no
mapping, folder names must be wnids. Scoring is ObjectNet's: a folder's logit is the max
over its mapped columns, so one-to-one and many-to-one mappings are the same case.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

from soup_exp.data.base import LabeledImages, LogitProjection
from soup_exp.data.classes import ClassSpace, wnid_to_index
from soup_exp.data.layout import DatasetLayoutError, scan_class_folders, subfolders

FOLDERS_TREE = """\
<data.datasets.NAME.root>/
  <folder>/  *.jpg|*.jpeg|*.png      one folder per class; data.datasets.NAME.mapping maps
  ...                                each folder to an ImageNet wnid/index (or a list)"""


def _imagenet_indices(folder: str, value, name: str) -> list[int]:
    lookup = wnid_to_index()
    out = []
    for item in value if isinstance(value, list | tuple) else [value]:
        if isinstance(item, int) or (isinstance(item, str) and item.isdigit()):
            index = int(item)
        elif item in lookup:
            index = lookup[item]
        else:
            raise DatasetLayoutError(f"{name}: folder {folder!r} maps to {item!r}, which is "
                                     "neither an ImageNet wnid nor an index 0..999")
        if not 0 <= index < 1000:
            raise DatasetLayoutError(f"{name}: folder {folder!r} maps to index {index} outside 0..999")
        out.append(index)
    return out


def _load_mapping(root: Path, mapping, name: str) -> dict[str, list[int]]:
    if mapping is None:
        return {f: [wnid_to_index()[f]] for f in subfolders(root) if f in wnid_to_index()}
    if isinstance(mapping, str | os.PathLike):
        try:
            mapping = json.loads(Path(mapping).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise DatasetLayoutError(f"{name}: cannot read mapping file {mapping}: {err}") from err
    if not isinstance(mapping, Mapping) or not mapping:
        raise DatasetLayoutError(f"{name}: the mapping must be a non-empty {{folder: wnid|index|list}}")
    return {str(f): _imagenet_indices(str(f), v, name) for f, v in mapping.items()}


def read_mapped_folders(name: str, classes: ClassSpace, *, root: str | os.PathLike, mapping=None) -> LabeledImages:
    """Folders (sorted) with a mapped class in ``classes`` become targets 0..K-1.

    ``mapping``: ``{folder: wnid | index | [several]}`` inline or a JSON file; None means
    the folder names are wnids. A folder is scored by the max over its mapped columns.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetLayoutError(f"{name}: dataset root {root} does not exist.\n"
                                 f"Expected tree:\n{FOLDERS_TREE}")
    folders, groups = [], []
    for folder, indices in sorted(_load_mapping(root, mapping, name).items()):
        columns = tuple(c for c in (classes.local_index(i) for i in indices) if c is not None)
        if columns:
            folders.append(folder)
            groups.append(columns)
    if not folders:
        raise DatasetLayoutError(f"{name}: no folder under {root} maps to a class of data.classes")
    scan = scan_class_folders(root, folders, dataset=name, tree=FOLDERS_TREE, kind="named")
    scan.require_complete()
    samples = [(p, t) for t, folder in enumerate(folders) for p in scan.images[folder]]
    return LabeledImages(name=name, samples=samples, num_targets=len(folders),
                         projection=LogitProjection(tuple(groups)), root=str(root),
                         info={"folders": folders})
