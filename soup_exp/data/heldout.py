"""The held-out split (the paper's ImageNet2p) carved out of ImageNet train.

One code path for real ImageNet and the demo: ``per_class`` images of every class are
drawn with a generator seeded by ``(seed, ImageNet index)``, so a class keeps the same
held-out images whatever other classes a run uses (an ImageNet-100 split is the full
split restricted). Positions index the ImageFolder listing of ``train/``; the split is
saved under ``split_dir`` with a hash of the held-out relative paths and reused while the
tree is unchanged. A user index file replaces the seeded split; with the authors'
``imagenet_98_idxs.npy`` (a 0/1 mask over that listing whose ONES are the held-out images:
their ``ImageNet2p`` is ``SubsetSampler(np.where(mask)[0])``, their training set
``ImageNet98p`` the zeros) the default config selects exactly their ImageNet2p images, in
their order, and runs their own check on the listing.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from soup_exp.data.base import LabeledImages
from soup_exp.data.classes import ClassSpace
from soup_exp.data.imagenet import TrainListing, list_train, listing_samples
from soup_exp.data.layout import DatasetLayoutError
from soup_exp.errors import ConfigError
from soup_exp.utils.hashing import stable_hash
from soup_exp.utils.io import atomic_path, atomic_write_json, read_json
from soup_exp.vocabulary import HELD_OUT

log = logging.getLogger(__name__)

LISTS = ("heldout", "train")
# The authors' sanity check (utils.test_model_on_dataset): over the full ImageNet train set
# (1,281,167 images in ImageFolder order), held-out image number 1000 of their file is this one.
AUTHORS_TRAIN_IMAGES = 1_281_167
AUTHORS_CHECK_POSITION = 1000
AUTHORS_CHECK_FILE = "n01675722_4108.JPEG"


def paths_sha256(relpaths) -> str:
    """Content hash of a list of relative paths (order matters)."""
    h = hashlib.sha256()
    for p in relpaths:
        h.update(p.encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()


def carve_heldout(labels: np.ndarray, classes: ClassSpace, per_class: int, seed: int) -> np.ndarray:
    """Sorted listing positions of ``per_class`` seeded images of each class in ``classes``."""
    if per_class < 1:
        raise ConfigError(f"data.heldout.per_class must be >= 1, got {per_class}")
    order = np.argsort(labels, kind="stable")
    sorted_labels = labels[order]
    chosen = []
    for imagenet_index in classes.indices:
        lo, hi = np.searchsorted(sorted_labels, [imagenet_index, imagenet_index + 1])
        members = order[lo:hi]
        if len(members) <= per_class:
            raise DatasetLayoutError(
                f"ImageNet train class {imagenet_index} has {len(members)} images: too few to "
                f"hold out data.heldout.per_class={per_class} and still train on the rest"
            )
        rng = np.random.default_rng([int(seed), int(imagenet_index)])
        chosen.append(rng.choice(members, size=per_class, replace=False))
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def read_index_file(path: str | os.PathLike, listing: TrainListing, lists: str = "heldout",
                    authors_check: bool = True) -> np.ndarray:
    """Held-out positions from a user file: a 0/1 mask, positions, or relative paths.

    ``.npy`` (loaded without pickle) or ``.txt`` (one integer or ``<wnid>/<file>`` per
    line). ``lists`` says which part the file names: ``heldout`` (the ones/entries are the
    held-out images, as in the authors' ``imagenet_98_idxs.npy``) or ``train`` (held-out =
    the rest). A mask over the full ImageNet train set gets the authors' check
    (:func:`check_authors_split`) unless ``authors_check`` is false.
    """
    if lists not in LISTS:
        raise ConfigError(f"data.heldout.index_file_lists must be one of {LISTS}, got {lists!r}")
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"data.heldout.index_file={path} does not exist")
    n = len(listing)
    listed, is_mask = _listed_positions(path, listing)
    if lists == "heldout":
        positions = listed
    else:
        keep = np.ones(n, dtype=bool)
        keep[listed] = False
        positions = np.flatnonzero(keep).astype(np.int64)
    if is_mask and n == AUTHORS_TRAIN_IMAGES and authors_check:
        check_authors_split(listing, positions, path, lists)
    return positions


def check_authors_split(listing: TrainListing, positions: np.ndarray, path: Path, lists: str) -> None:
    """The authors' own assertion: held-out image ``AUTHORS_CHECK_POSITION`` (0-based, in
    their order) is ``AUTHORS_CHECK_FILE``; otherwise the listing or the reading differs."""
    found = listing.relpaths[int(positions[AUTHORS_CHECK_POSITION])] if positions.size > AUTHORS_CHECK_POSITION else None
    if found is not None and found.endswith(AUTHORS_CHECK_FILE):
        log.info("held-out split: the authors' check passed (held-out image %d is %s)",
                 AUTHORS_CHECK_POSITION, found)
        return
    hint = ("data.heldout.index_file_lists=train reads the file as the TRAIN part, but the "
            "authors' file marks the held-out images with ones: use index_file_lists=heldout"
            if lists == "train" else
            f"the ImageFolder listing of {listing.root} (sorted wnid folders, sorted files) differs "
            "from the authors' copy of ImageNet train, so their mask selects other images")
    raise DatasetLayoutError(
        f"{path}: the authors' held-out check failed: held-out image {AUTHORS_CHECK_POSITION} should be "
        f"{AUTHORS_CHECK_FILE}, but is {found or 'missing'} ({positions.size} held-out images). {hint}. "
        "If this mask is your own split and not the authors' imagenet_98_idxs.npy, set "
        "data.heldout.authors_check=false."
    )


def _listed_positions(path: Path, listing: TrainListing) -> tuple[np.ndarray, bool]:
    """Sorted positions the file names, and whether the file was a 0/1 mask."""
    n = len(listing)
    if path.suffix == ".npy":
        try:
            values = np.load(path, allow_pickle=False)
        except ValueError as err:
            raise ConfigError(f"{path}: not a plain .npy array (pickled files are refused): {err}") from err
    elif path.suffix == ".txt":
        lines = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
        if all(ln.lstrip("-").isdigit() for ln in lines):
            values = np.asarray([int(ln) for ln in lines], dtype=np.int64)
        else:
            return _positions_of_paths(path, lines, listing), False
    else:
        raise ConfigError(f"data.heldout.index_file={path}: expected a .npy or .txt file")
    values = np.asarray(values)
    if values.ndim != 1:
        raise ConfigError(f"{path}: expected a 1-D array (a 0/1 mask or positions), got shape {values.shape}")
    if _is_mask(values, n):
        if values.size != n:
            raise DatasetLayoutError(
                f"{path} is a 0/1 mask of length {values.size}, but the ImageNet train listing "
                f"under {listing.root} has {n} images (ImageFolder order over every wnid folder "
                "present): the file belongs to a different copy of ImageNet train"
            )
        return np.flatnonzero(values.astype(bool)).astype(np.int64), True
    if not np.issubdtype(values.dtype, np.integer) and not np.all(np.mod(values, 1) == 0):
        raise ConfigError(f"{path}: positions must be integers")
    positions = np.unique(values.astype(np.int64))
    if positions.size and (positions[0] < 0 or positions[-1] >= n):
        raise DatasetLayoutError(
            f"{path} lists position {int(positions[-1] if positions[-1] >= n else positions[0])}, "
            f"but the ImageNet train listing under {listing.root} has {n} images"
        )
    return positions, False


def _is_mask(values: np.ndarray, n: int) -> bool:
    """Booleans, or 0/1 values too many to be a list of positions 0 and 1."""
    if values.dtype == bool:
        return True
    return values.size > 2 and bool(np.isin(values, (0, 1)).all()) or (
        values.size == n and bool(np.isin(values, (0, 1)).all()))


def _positions_of_paths(path: Path, lines: list[str], listing: TrainListing) -> np.ndarray:
    where = {p: i for i, p in enumerate(listing.relpaths)}
    positions, unknown = [], []
    for line in lines:
        rel = line.replace(os.sep, "/").removeprefix("train/")
        (positions.append(where[rel]) if rel in where else unknown.append(line))
    if unknown:
        raise DatasetLayoutError(f"{path}: {len(unknown)} path(s) not found under {listing.root}, "
                                 f"e.g. {unknown[:3]}")
    return np.unique(np.asarray(positions, dtype=np.int64))


def _seeded_split(listing: TrainListing, classes: ClassSpace, per_class: int, seed: int,
                  split_dir: str | os.PathLike | None) -> np.ndarray:
    settings = {"per_class": int(per_class), "seed": int(seed), "classes": list(classes.indices),
                "listing_sha256": paths_sha256(listing.relpaths)}
    if split_dir is None:
        return carve_heldout(listing.imagenet_labels, classes, per_class, seed)
    key = stable_hash(settings)
    npy, sidecar = Path(split_dir) / f"heldout-{key}.npy", Path(split_dir) / f"heldout-{key}.json"
    cached = _load_saved(npy, sidecar, listing)
    if cached is not None:
        log.info("held-out split: reusing %s (%d images)", npy, cached.size)
        return cached
    positions = carve_heldout(listing.imagenet_labels, classes, per_class, seed)
    with atomic_path(npy) as tmp, open(tmp, "wb") as f:
        np.save(f, positions, allow_pickle=False)
    atomic_write_json(sidecar, {
        "lists": "heldout", "train_root": str(listing.root), "train_images": len(listing),
        "heldout_images": int(positions.size), "num_classes": classes.num_classes,
        "heldout_sha256": paths_sha256(listing.relpaths[i] for i in positions),
        **{k: v for k, v in settings.items() if k != "classes"},
        "classes_hash": stable_hash(settings["classes"]),
    })
    log.info("held-out split: %d images (%d/class, seed %d) saved to %s",
             positions.size, per_class, seed, npy)
    return positions


def _load_saved(npy: Path, sidecar: Path, listing: TrainListing) -> np.ndarray | None:
    """The saved positions if their held-out paths still hash to the recorded value."""
    if not (npy.is_file() and sidecar.is_file()):
        return None
    try:
        positions = np.load(npy, allow_pickle=False).astype(np.int64)
        recorded = read_json(sidecar)["heldout_sha256"]
    except (OSError, ValueError, KeyError):
        return None
    if positions.size and (positions.min() < 0 or positions.max() >= len(listing)):
        return None
    if paths_sha256(listing.relpaths[i] for i in positions) != recorded:
        log.warning("held-out split %s no longer matches its hash; recomputing", npy)
        return None
    return positions


def heldout_split(data_cfg: Mapping, classes: ClassSpace) -> tuple[TrainListing, np.ndarray]:
    """The train listing and the sorted positions of its held-out images (classes in the space)."""
    listing = list_train(data_cfg["roots"]["ImageNet"], classes)
    cfg = data_cfg["heldout"]
    index_file = cfg["index_file"]
    if index_file:
        positions = read_index_file(index_file, listing, cfg["index_file_lists"],
                                    authors_check=bool(cfg["authors_check"]))
        log.info("held-out split: %d images from %s", positions.size, index_file)
    else:
        positions = _seeded_split(listing, classes, cfg["per_class"], cfg["seed"], cfg["split_dir"])
    in_space = np.asarray([classes.local_index(int(listing.imagenet_labels[i])) is not None
                           for i in positions], dtype=bool)
    return listing, positions[in_space] if positions.size else positions


def build_heldout(data_cfg: Mapping, classes: ClassSpace) -> LabeledImages:
    """The held-out set (result key ``ImageNet2p``); targets are ClassSpace columns."""
    listing, positions = heldout_split(data_cfg, classes)
    return LabeledImages(name=HELD_OUT, samples=listing_samples(listing, positions, classes),
                         num_targets=classes.num_classes, root=str(listing.root),
                         info={"train_images": len(listing)})


def build_train_samples(data_cfg: Mapping, classes: ClassSpace) -> list[tuple[str, int]]:
    """ImageNet train minus the held-out split, as (path, ClassSpace column), listing order."""
    listing, positions = heldout_split(data_cfg, classes)
    keep = np.ones(len(listing), dtype=bool)
    keep[positions] = False
    return listing_samples(listing, np.flatnonzero(keep), classes)
