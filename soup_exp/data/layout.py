"""Scanning class-folder trees, and the errors a wrong tree produces.

Every real dataset is a root holding one folder per class (named by wnid, by ImageNet
index or by ObjectNet folder name). A :class:`FolderScan` records what was found against
what was expected, so the readers can insist on a complete tree while the checker reports
the same facts without failing.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from soup_exp.errors import SoupExpError

# torchvision's ImageFolder would also accept .bmp/.webp etc.; the real datasets ship
# only these, and keeping the list short keeps stray files out of the sample lists.
IMAGE_EXTENSIONS = frozenset({".jpeg", ".jpg", ".png"})

WNID_PATTERN = re.compile(r"^n\d{8}$")
INDEX_PATTERN = re.compile(r"^\d+$")


class DatasetLayoutError(SoupExpError, ValueError):
    """A dataset tree on disk differs from the layout its official download unpacks to."""


def is_image_file(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def list_images(folder: str | os.PathLike) -> list[str]:
    """Image files directly inside ``folder``, sorted by name (ImageFolder's order)."""
    with os.scandir(folder) as entries:
        names = [e.name for e in entries if is_image_file(e.name) and e.is_file()]
    return [os.path.join(folder, n) for n in sorted(names)]


def subfolders(root: str | os.PathLike) -> list[str]:
    """Names of the visible sub-directories of ``root``, sorted."""
    with os.scandir(root) as entries:
        return sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))


def folder_kind(names: Sequence[str]) -> str:
    """``wnid`` / ``index`` / ``other``: what most of these folder names look like."""
    wnids = sum(bool(WNID_PATTERN.match(n)) for n in names)
    indices = sum(bool(INDEX_PATTERN.match(n)) for n in names)
    if not wnids and not indices:
        return "other"
    return "wnid" if wnids >= indices else "index"


def require_dir(path: Path, dataset: str, tree: str, what: str = "dataset root") -> None:
    if not path.is_dir():
        raise DatasetLayoutError(
            f"{dataset}: {what} {path} does not exist.\nExpected tree:\n{tree}\n"
            f"Point data.roots.{dataset} at it, or move every dataset root with "
            "SOUP_DATA_DIR=/path/to/datasets (or paths.data_dir=...; the default is ./data under the "
            "current directory); docs/datasets.md says where to get it."
        )


@dataclass
class FolderScan:
    """The class folders found under ``root`` against the ones a class space expects."""

    dataset: str
    root: Path
    tree: str
    expected: list[str]
    images: dict[str, list[str]] = field(default_factory=dict)

    @property
    def missing(self) -> list[str]:
        return [f for f in self.expected if f not in self.images]

    @property
    def empty(self) -> list[str]:
        return [f for f in self.expected if f in self.images and not self.images[f]]

    @property
    def num_found(self) -> int:
        """Expected class folders present and holding at least one image."""
        return sum(1 for f in self.expected if self.images.get(f))

    @property
    def num_images(self) -> int:
        return sum(len(v) for v in self.images.values())

    def require_complete(self) -> FolderScan:
        """Fail unless every expected class folder exists and holds images."""
        problems = []
        if self.missing:
            problems.append(f"{len(self.missing)} class folder(s) missing, e.g. {_few(self.missing)}")
        if self.empty:
            problems.append(f"{len(self.empty)} class folder(s) hold no images "
                            f"(.JPEG/.jpg/.jpeg/.png), e.g. {_few(self.empty)}")
        if problems:
            raise DatasetLayoutError(
                f"{self.dataset}: incomplete tree under {self.root}: " + "; ".join(problems)
                + f".\nExpected tree:\n{self.tree}\nComplete the download/extraction, or "
                "restrict the classes with data.classes=<list or file>."
            )
        return self


def scan_class_folders(
    root: str | os.PathLike, expected: Sequence[str], *, dataset: str, tree: str, kind: str
) -> FolderScan:
    """Scan ``root`` for the ``expected`` class folders, whose names are of ``kind``.

    Raises :class:`DatasetLayoutError` when the root is missing or its folders are of the
    wrong kind (wnid folders where class-index folders belong, or the reverse).
    """
    root = Path(root)
    require_dir(root, dataset, tree)
    found = subfolders(root)
    _check_kind(root, found, dataset=dataset, tree=tree, kind=kind)
    present = set(found)
    images = {f: list_images(root / f) for f in expected if f in present}
    return FolderScan(dataset=dataset, root=root, tree=tree, expected=list(expected), images=images)


def _check_kind(root: Path, found: list[str], *, dataset: str, tree: str, kind: str) -> None:
    if kind == "named":  # ObjectNet-style folder names: anything goes
        if not found:
            raise DatasetLayoutError(f"{dataset}: no class folders under {root}.\nExpected tree:\n{tree}")
        return
    seen = folder_kind(found) if found else "none"
    if seen == kind:
        return
    described = {
        "wnid": "wnid folders (e.g. n01440764/)",
        "index": "class-index folders (0/ .. 999/, as in ImageNetV2)",
        "other": f"folders that are neither wnids nor class indices (e.g. {_few(found)})",
        "none": "no sub-folders at all",
    }
    hint = ""
    if seen == "index" and kind == "wnid":
        hint = " This looks like ImageNetV2's layout; point the root at the right dataset."
    elif seen == "wnid" and kind == "index":
        hint = (" ImageNetV2 matched-frequency names its folders by ImageNet class index "
                "(0..999), not by wnid; use the official ImageNetV2 archive as unpacked.")
    elif seen in ("other", "none"):
        nested = _nested_candidate(root, found, kind)
        if nested is not None:
            hint = f" The class folders seem to be one level down: did you mean {nested}?"
        elif seen == "none" and any(is_image_file(n) for n in os.listdir(root)):
            hint = " The images lie directly in the root: sort them into one folder per class."
    raise DatasetLayoutError(
        f"{dataset}: {root} holds {described[seen]}, but {described[kind]} are expected.{hint}"
        f"\nExpected tree:\n{tree}"
    )


def _nested_candidate(root: Path, found: list[str], kind: str) -> Path | None:
    for name in found[:5]:
        inner = subfolders(root / name)
        if inner and folder_kind(inner) == kind:
            return root / name
    return None


def _few(names: Sequence[str], n: int = 5) -> str:
    shown = ", ".join(str(x) for x in list(names)[:n])
    return shown + (", ..." if len(names) > n else "")
