"""ImageNet class identities and class subsets.

The canonical order is the one torchvision's ImageFolder gives ImageNet (sorted wnids),
which is also the order of open_clip's class names and of timm's index lists.
A :class:`ClassSpace` is the set of ImageNet classes a model predicts: all 1000, or a
subset for ImageNet-100 style ablations (and for the miniature demo data).
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path

from soup_exp.errors import ConfigError


def _timm_info_file(name: str) -> Path:
    """A class-list file shipped with timm (found without importing timm, which takes seconds)."""
    return Path(find_spec("timm").origin).parent / "data" / "_info" / name


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
        """``None`` = all 1000; a list of wnids and/or indices; or a text file of them.

        A bad entry is a :class:`ConfigError` naming it and the nearest valid wnid.
        """
        if classes is None:
            return cls.full()
        source = "data.classes"
        if isinstance(classes, str):
            path = Path(classes)
            if not path.is_file():
                raise ConfigError(
                    f"data.classes={classes!r}: expected a file listing ImageNet wnids or "
                    "indices (one per line), a list, or null for all 1000 classes"
                )
            source = f"data.classes file {path}"
            classes = path.read_text().split()
        if not classes:
            raise ConfigError(f"{source} is empty; list at least one ImageNet wnid or index (null = all 1000)")
        return cls(tuple(sorted({class_index(c, source) for c in classes})))

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

    def identity(self) -> dict[str, int | str]:
        """Recorded in result rows, so reports can tell runs on other class spaces apart."""
        from soup_exp.utils.hashing import stable_hash

        return {"count": self.num_classes, "hash": stable_hash(list(self.indices))}

    @functools.cached_property
    def _local(self) -> dict[int, int]:
        return {g: j for j, g in enumerate(self.indices)}

    def local_index(self, imagenet_index: int) -> int | None:
        """Column of ImageNet class ``imagenet_index`` in this space, or None if absent."""
        return self._local.get(imagenet_index)


def class_index(entry: int | str, source: str = "data.classes") -> int:
    """The ImageNet-1k index of one ``data.classes`` entry (a wnid or an index 0..999)."""
    if isinstance(entry, bool) or not isinstance(entry, int | str):
        raise ConfigError(f"{source}: {entry!r} is neither an ImageNet wnid (e.g. n01440764) nor an index 0..999")
    if isinstance(entry, int) or entry.isdigit():
        index = int(entry)
        if not 0 <= index < 1000:
            raise ConfigError(f"{source}: index {index} is out of range; ImageNet-1k indices are 0..999")
        return index
    lookup = wnid_to_index()
    if entry in lookup:
        return lookup[entry]
    raise ConfigError(f"{source}: {entry!r} is not an ImageNet-1k wnid{_nearest_hint(entry)}; "
                      "entries are wnids like n01440764 or indices 0..999")


def _nearest_hint(entry: str) -> str:
    """The closest wnid by spelling, or the wnid of the closest class name (``tench``)."""
    wnids, names = imagenet_wnids(), imagenet_classnames()
    close = difflib.get_close_matches(entry, wnids, n=1, cutoff=0.5)
    if close:
        return f" (nearest valid wnid: {close[0]}, {names[wnid_to_index()[close[0]]]})"
    lowered = [n.lower() for n in names]
    close = difflib.get_close_matches(entry.lower().replace("_", " "), lowered, n=1, cutoff=0.6)
    if close:
        index = lowered.index(close[0])
        return f" (nearest valid wnid: {wnids[index]}, class {names[index]!r})"
    return ""
