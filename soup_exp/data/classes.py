"""ImageNet class identities and class subsets.

The canonical order is the one torchvision's ImageFolder gives ImageNet (sorted wnids),
which is also the order of open_clip's class names and of timm's index lists.
A :class:`ClassSpace` is the set of ImageNet classes a model predicts: all 1000, or a
subset for ImageNet-100 style ablations (and for the miniature demo data).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import timm


def _timm_info_file(name: str) -> Path:
    return Path(timm.__file__).parent / "data" / "_info" / name


@functools.cache
def imagenet_wnids() -> tuple[str, ...]:
    """The 1000 ImageNet-1k wnids in canonical (sorted) order, from timm."""
    wnids = tuple(_timm_info_file("imagenet_synsets.txt").read_text().split())
    assert len(wnids) == 1000 and list(wnids) == sorted(wnids)
    return wnids


@functools.cache
def imagenet_classnames() -> tuple[str, ...]:
    """Human-readable class names used for zero-shot prompts (open_clip's list)."""
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    return tuple(IMAGENET_CLASSNAMES)


@functools.cache
def wnid_to_index() -> dict[str, int]:
    return {w: i for i, w in enumerate(imagenet_wnids())}


def timm_index_list(name: str) -> tuple[int, ...]:
    """ImageNet indices from one of timm's shipped lists (e.g. ``imagenet_r_indices.txt``)."""
    return tuple(int(x) for x in _timm_info_file(name).read_text().split())


@dataclass(frozen=True)
class ClassSpace:
    """The ImageNet classes a model predicts, as sorted ImageNet-1k indices.

    Column ``j`` of a model's logits is ImageNet class ``indices[j]``.
    """

    indices: tuple[int, ...]

    def __post_init__(self) -> None:
        if not self.indices:
            raise ValueError("a ClassSpace needs at least one class")
        if list(self.indices) != sorted(set(self.indices)):
            raise ValueError("ClassSpace indices must be sorted and unique")
        if self.indices[0] < 0 or self.indices[-1] >= 1000:
            raise ValueError("ClassSpace indices must lie in 0..999")

    @classmethod
    def full(cls) -> ClassSpace:
        return cls(tuple(range(1000)))

    @classmethod
    def from_config(cls, classes: None | str | Sequence[int | str]) -> ClassSpace:
        """``None`` = all 1000; a list of wnids and/or indices; or a text file of them."""
        if classes is None:
            return cls.full()
        if isinstance(classes, str):
            path = Path(classes)
            if not path.is_file():
                raise FileNotFoundError(
                    f"data.classes={classes!r}: expected a file listing ImageNet wnids or "
                    "indices (one per line), a list, or null for all 1000 classes"
                )
            classes = path.read_text().split()
        lookup = wnid_to_index()
        indices = set()
        for c in classes:
            if isinstance(c, int) or (isinstance(c, str) and c.isdigit()):
                indices.add(int(c))
            elif c in lookup:
                indices.add(lookup[c])
            else:
                raise ValueError(f"data.classes: {c!r} is neither an ImageNet wnid nor an index")
        return cls(tuple(sorted(indices)))

    @property
    def num_classes(self) -> int:
        return len(self.indices)

    @property
    def is_full(self) -> bool:
        return self.num_classes == 1000

    @property
    def wnids(self) -> list[str]:
        all_wnids = imagenet_wnids()
        return [all_wnids[i] for i in self.indices]

    @property
    def classnames(self) -> list[str]:
        names = imagenet_classnames()
        return [names[i] for i in self.indices]

    @functools.cached_property
    def _local(self) -> dict[int, int]:
        return {g: j for j, g in enumerate(self.indices)}

    def local_index(self, imagenet_index: int) -> int | None:
        """Column of ImageNet class ``imagenet_index`` in this space, or None if absent."""
        return self._local.get(imagenet_index)
