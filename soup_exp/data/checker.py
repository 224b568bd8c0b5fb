"""Dataset checker: does every configured root hold the tree its download unpacks to?

Runs the readers' own scans, so "the checker is happy" means "the readers will load it".
Per dataset it reports found/missing, class folders found vs expected, images vs the
official counts (full class space only) and, when asked, files that do not decode.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from soup_exp.data.classes import ClassSpace
from soup_exp.data.imagenet import IMAGENET_TREE, scan_wnid_folders, split_root
from soup_exp.data.images import UnreadableImageError, load_image
from soup_exp.data.layout import DatasetLayoutError, FolderScan
from soup_exp.data.objectnet import border_crop, border_note, scan_objectnet
from soup_exp.data.registry import class_space, root_key
from soup_exp.data.shifts import scan_sketch, scan_subset_shift, scan_v2
from soup_exp.vocabulary import HELD_OUT

OFFICIAL_IMAGES = {
    "ImageNetTrain": 1_281_167,
    "ImageNet": 50_000,
    "ImageNetV2": 10_000,
    "ImageNetSketch": 50_889,
    "ImageNetR": 30_000,
    "ImageNetA": 7_500,
    "ObjectNet": 18_574,  # images in the 113 folders that map to ImageNet classes
}
# Evaluation sets read from another dataset's tree.
ALIASES = {HELD_OUT: "ImageNetTrain", "ImageNetReal": "ImageNet"}

Scanner = Callable[[str, ClassSpace], FolderScan]
SCANNERS: dict[str, Scanner] = {
    "ImageNetTrain": lambda root, cs: scan_wnid_folders(split_root(root, "train"), cs,
                                                        dataset="ImageNet", tree=IMAGENET_TREE),
    "ImageNet": lambda root, cs: scan_wnid_folders(split_root(root, "val"), cs,
                                                   dataset="ImageNet", tree=IMAGENET_TREE),
    "ImageNetV2": scan_v2,
    "ImageNetSketch": scan_sketch,
    "ImageNetR": lambda root, cs: scan_subset_shift("ImageNetR", root, cs),
    "ImageNetA": lambda root, cs: scan_subset_shift("ImageNetA", root, cs),
    "ObjectNet": lambda root, cs: scan_objectnet(root, cs)[2],
}
BORDER = {"ObjectNet": border_crop}  # dataset -> the crop its reader applies, from cfg.data
# dataset -> advice on a scan that passed (empty string: none), whatever the status
ADVICE: dict[str, Callable[[FolderScan, Mapping], str]] = {
    "ObjectNet": lambda scan, data_cfg: border_note(scan, border_crop(data_cfg)),
}


@dataclass
class DatasetReport:
    """What the checker found for one dataset. ``status``: ok | partial | missing | error."""

    name: str
    root: str
    status: str
    classes_found: int | None = None
    classes_expected: int | None = None
    images: int | None = None
    official_images: int | None = None
    unreadable: list[str] = field(default_factory=list)
    message: str = ""

    @property
    def failed(self) -> bool:
        return self.status in ("missing", "error")

    def add_note(self, text: str) -> None:
        if text:
            self.message = f"{self.message}; {text}" if self.message else text


def default_names(data_cfg: Mapping) -> list[str]:
    roots = data_cfg.get("roots") or {}
    return ["ImageNetTrain", *[n for n in SCANNERS if n != "ImageNetTrain" and roots.get(root_key(n))]]


def check_datasets(data_cfg: Mapping, names: Sequence[str] | None = None, *, verify: bool = False,
                   classes: ClassSpace | None = None, num_threads: int = 8) -> list[DatasetReport]:
    """One report per dataset (``names`` default: every configured root, train included)."""
    classes = classes or class_space(data_cfg)
    wanted = []
    for name in names or default_names(data_cfg):
        name = ALIASES.get(name, name)
        if name not in SCANNERS:
            raise DatasetLayoutError(f"check_data: unknown dataset {name!r}; known: {', '.join(SCANNERS)}")
        if name not in wanted:
            wanted.append(name)
    return [_check_one(name, data_cfg, classes, verify, num_threads) for name in wanted]


def _check_one(name: str, data_cfg: Mapping, classes: ClassSpace, verify: bool,
               num_threads: int) -> DatasetReport:
    root = str((data_cfg.get("roots") or {}).get(root_key(name)) or "")
    report = DatasetReport(name=name, root=root, status="ok")
    if not root or not Path(root).is_dir():
        report.status = "missing"
        report.message = f"root {root or '(data.roots.' + name + ' unset)'} not found"
        return report
    try:
        scan = SCANNERS[name](root, classes)
    except DatasetLayoutError as err:
        report.status, report.message = "error", str(err)
        return report
    report.classes_found, report.classes_expected = scan.num_found, len(scan.expected)
    report.images = scan.num_images
    report.official_images = OFFICIAL_IMAGES[name] if classes.is_full else None
    try:
        scan.require_complete()
    except DatasetLayoutError as err:
        report.status, report.message = "error", str(err)
    else:
        if report.official_images is not None and report.images != report.official_images:
            report.status = "partial"
            report.message = (f"{report.images:,} images where the official release has "
                              f"{report.official_images:,}")
    if name in ADVICE:
        report.add_note(ADVICE[name](scan, data_cfg))
    if verify:
        report.unreadable = _unreadable([p for v in scan.images.values() for p in v],
                                        BORDER[name](data_cfg) if name in BORDER else 0, name, num_threads)
        if report.unreadable:
            report.status = "error"
            report.add_note(f"{len(report.unreadable)} unreadable file(s), e.g. {report.unreadable[0]}")
    return report


def _unreadable(paths: list[str], border_crop: int, name: str, num_threads: int) -> list[str]:
    def bad(path: str) -> str | None:
        try:
            load_image(path, border_crop)
        except UnreadableImageError:
            return path
        return None

    with ThreadPoolExecutor(max(num_threads, 1)) as pool:
        results = list(tqdm(pool.map(bad, paths), total=len(paths), desc=f"decoding {name}",
                            unit="img", disable=None))
    return [p for p in results if p]


def render_table(reports: Sequence[DatasetReport], data_dir: str | None = None) -> str:
    """A Markdown table of the reports, then one note per dataset that is not ok, then
    (given ``data_dir``, the resolved ``paths.data_dir``) where missing roots were looked for."""
    lines = ["| dataset | status | class folders | images | official | root |",
             "|---|---|---|---|---|---|"]
    for r in reports:
        folders = "-" if r.classes_expected is None else f"{r.classes_found}/{r.classes_expected}"
        images = "-" if r.images is None else f"{r.images:,}"
        official = "-" if r.official_images is None else f"{r.official_images:,}"
        lines.append(f"| {r.name} | {r.status} | {folders} | {images} | {official} | {r.root} |")
    notes = [f"{r.name} ({r.status}): {r.message}" for r in reports if r.message]
    missing_under = [r for r in reports if r.status == "missing" and data_dir
                     and Path(r.root or "/").is_relative_to(data_dir)]
    if missing_under:
        notes.append(data_dir_hint(str(data_dir)))
    return "\n".join(lines + ([""] + notes if notes else []))


def data_dir_hint(data_dir: str) -> str:
    """Where the dataset roots come from and how to move them (most first runs miss this)."""
    if os.environ.get("SOUP_DATA_DIR"):
        source = "set by SOUP_DATA_DIR"
    elif os.environ.get("SOUP_ROOT"):
        source = "the default: $SOUP_ROOT/data"
    else:
        source = "the default: ./data under the current directory"
    return (f"Dataset roots are looked up under paths.data_dir={data_dir} ({source}). Point all of them "
            "elsewhere with SOUP_DATA_DIR=/path/to/datasets (or paths.data_dir=...), one with "
            "data.roots.<name>=...; docs/datasets.md lists the folder each dataset needs.")


def raise_on_failure(reports: Sequence[DatasetReport]) -> None:
    """Raise one short DatasetLayoutError naming every missing or broken dataset; the table
    printed before it holds the details, so they are not repeated."""
    failed = [r for r in reports if r.failed]
    if failed:
        raise DatasetLayoutError(
            "dataset check failed for " + ", ".join(f"{r.name} ({r.status})" for r in failed)
            + "; the notes under the table above say what is wrong with each")
