"""Dataset registry: result key -> builder of a :class:`LabeledImages` from ``cfg.data``.

Stages never look at layouts; they ask for ``build_eval_dataset(name, cfg.data, classes)``
and ``build_train_samples(cfg.data, classes)``. Lookups only read: data that has to be
made first is made by the pipeline's data stage (``data.prepare``, soup_exp.inputs).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

from soup_exp.data import heldout
from soup_exp.data.base import LabeledImages
from soup_exp.data.classes import ClassSpace
from soup_exp.data.folders import read_mapped_folders
from soup_exp.data.imagenet import read_imagenet_real, read_imagenet_val
from soup_exp.data.layout import DatasetLayoutError
from soup_exp.data.objectnet import border_crop, read_objectnet
from soup_exp.data.shifts import (
    read_imagenet_a,
    read_imagenet_r,
    read_imagenet_sketch,
    read_imagenet_v2,
)
from soup_exp.errors import ConfigError
from soup_exp.utils.config import to_plain
from soup_exp.vocabulary import HELD_OUT

__all__ = ["EVAL_DATASETS", "DatasetLayoutError", "build_eval_dataset", "build_train_samples",
           "class_space", "dataset_folder", "dataset_root", "root_key"]

EvalBuilder = Callable[[Mapping, ClassSpace], LabeledImages]


TRAIN_READERS = (HELD_OUT, "train")  # both read the train folder of the ImageNet root
# names read from another dataset's root (ImageNetTrain: check_data's scanner of that folder)
SHARED_ROOTS = {"ImageNetReal": "ImageNet", **dict.fromkeys([*TRAIN_READERS, "ImageNetTrain"], "ImageNet")}


def root_key(name: str) -> str:
    """The ``data.roots`` key a built-in dataset is read from."""
    return SHARED_ROOTS.get(name, name)


def dataset_root(data_cfg: Mapping, name: str) -> str:
    """``data.roots.<name>``; one line naming the key when it is not set."""
    roots = data_cfg.get("roots") or {}
    root = roots.get(name)
    if not root:
        raise ConfigError(f"data.roots.{name} is not set; point it at the {name} folder "
                          "(see docs/datasets.md)")
    return str(root)


def dataset_folder(data_cfg: Mapping, name: str) -> str | None:
    """The folder dataset ``name`` is read from, without reading it (None: not set): the
    train folder of the ImageNet root for the held-out and training sets, a built-in's
    ``data.roots`` entry, else a user dataset's ``root``. The one place a dataset's name meets its root;
    preflight asks it."""
    roots = data_cfg.get("roots") or {}
    extra = data_cfg.get("datasets") or {}
    if name in TRAIN_READERS:
        return str(Path(str(roots.get(root_key(name)))) / "train")
    if name in EVAL_DATASETS or name not in extra:
        root = roots.get(root_key(name))
    else:
        root = (extra[name] or {}).get("root")
    return str(root) if root else None


def _rooted(reader: Callable[[str, ClassSpace], LabeledImages], name: str) -> EvalBuilder:
    return lambda data_cfg, classes: reader(dataset_root(data_cfg, root_key(name)), classes)


EVAL_DATASETS: dict[str, EvalBuilder] = {
    HELD_OUT: heldout.build_heldout,
    "ImageNet": _rooted(read_imagenet_val, "ImageNet"),
    "ImageNetV2": _rooted(read_imagenet_v2, "ImageNetV2"),
    "ImageNetSketch": _rooted(read_imagenet_sketch, "ImageNetSketch"),
    "ImageNetR": _rooted(read_imagenet_r, "ImageNetR"),
    "ImageNetA": _rooted(read_imagenet_a, "ImageNetA"),
    "ObjectNet": lambda data_cfg, classes: read_objectnet(dataset_root(data_cfg, root_key("ObjectNet")), classes,
                                                          border_crop=border_crop(data_cfg)),
    "ImageNetReal": _rooted(read_imagenet_real, "ImageNetReal"),
}


def class_space(data_cfg: Mapping) -> ClassSpace:
    """The ClassSpace of ``data.classes`` (null = all 1000)."""
    return ClassSpace.from_config(to_plain(data_cfg.get("classes")))


def build_eval_dataset(name: str, data_cfg: Mapping, classes: ClassSpace | None = None) -> LabeledImages:
    """The evaluation set ``name``: a built-in result key, or a user's dataset in
    ``data.datasets.<name>`` (one file in the ``datasets`` config group)."""
    classes = classes or class_space(data_cfg)
    if name in EVAL_DATASETS:
        return EVAL_DATASETS[name](data_cfg, classes)
    extra = to_plain(data_cfg.get("datasets")) or {}
    if name in extra:
        return user_dataset(name, dict(extra[name]), classes)
    raise ConfigError(f"unknown evaluation dataset {name!r}; known: {', '.join([*EVAL_DATASETS, *extra])} "
                      "(add your own as a file in the datasets config group, see docs/extending.md)")


def user_dataset(name: str, spec: dict, classes: ClassSpace) -> LabeledImages:
    """``spec['_target_'](name, classes, **rest)``; the default target reads an ImageFolder
    tree whose folders map to ImageNet classes (:func:`read_mapped_folders`)."""
    from hydra.utils import get_method

    target = spec.pop("_target_", None)
    reader = get_method(target) if target else read_mapped_folders
    try:
        dataset = reader(name, classes, **spec)
    except TypeError as err:
        raise ConfigError(f"data.datasets.{name}: {err}") from err
    if not isinstance(dataset, LabeledImages):
        raise ConfigError(f"data.datasets.{name}: {target} returned {type(dataset).__name__}, not LabeledImages")
    return dataset


def build_train_samples(data_cfg: Mapping, classes: ClassSpace | None = None) -> list[tuple[str, int]]:
    """ImageNet train minus the held-out split: (path, ClassSpace column) pairs."""
    classes = classes or class_space(data_cfg)
    return heldout.build_train_samples(data_cfg, classes)
