"""Preprocessed-data cache: decode each evaluation set once, read it as uint8 after.

A greedy soup evaluates every candidate on the held-out set and a sweep evaluates every
member on the whole suite; decoding and resizing JPEGs each time would make evaluation
run at the speed of the JPEG decoder. The first pass stores the images after
resize/crop and before normalisation in a raw uint8 file of shape (N, 3, H, W), read
back with a memory map. A JSON sidecar describes it.

The file name carries a key over the dataset name, every file's path, size and mtime,
the border crop and the transform, so a changed file or transform selects a new entry
(and the stale one is pruned). Creation is atomic and safe when jobs race: images are
written to a temp file, which is published with ``os.link`` (fails if the name exists,
so the loser of a race discards its copy and uses the winner's); a file lock makes
concurrent jobs wait instead of decoding twice where the filesystem supports it.
Training never reads this cache: its augmentation is random by design.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from soup_exp.data.base import LabeledImages
from soup_exp.errors import SoupExpError
from soup_exp.evaluation.sources import Batch, DecodedImages, DecodingSource, ordered_map
from soup_exp.evaluation.transforms import SplitTransform
from soup_exp.utils.hashing import stable_hash
from soup_exp.utils.io import (
    apply_umask,
    atomic_write_json,
    file_lock,
    make_temp,
    read_json,
    remove_stale_temp_files,
)

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
DATA_SUFFIX = ".uint8"
META_SUFFIX = ".json"


class CacheError(SoupExpError):
    """The cache cannot be built where configured (disk space, unreadable files)."""


def cache_key(dataset: LabeledImages, transform: SplitTransform) -> dict:
    """Everything that determines the cached bytes, and the entry name derived from it."""
    parts = {
        "format": FORMAT_VERSION,
        "dataset": dataset.name,
        "root": str(dataset.root),
        "files": dataset.files_fingerprint(),
        "num_images": len(dataset),
        "border_crop": dataset.border_crop,
        "transform": transform.key,
    }
    safe_name = "".join(c if c.isalnum() or c in "-_" else "_" for c in dataset.name)
    return {**parts, "entry": f"{safe_name}-{stable_hash(parts, length=16)}"}


@dataclass
class CachedImages:
    """A completed cache entry, memory-mapped read-only."""

    path: Path
    meta: dict

    def __post_init__(self) -> None:
        self.images = np.memmap(self.path, dtype=np.uint8, mode="r", shape=tuple(self.meta["shape"]))

    def __len__(self) -> int:
        return int(self.meta["shape"][0])

    @property
    def nbytes(self) -> int:
        return int(self.meta["bytes"])

    def read(self, indices: slice | np.ndarray, pin_memory: bool = False) -> torch.Tensor:
        """Copy rows into a fresh (optionally pinned) uint8 tensor: one memcpy, GIL-free."""
        rows = self.images[indices]
        out = torch.empty(rows.shape, dtype=torch.uint8, pin_memory=pin_memory)
        out.numpy()[...] = rows
        return out

    def plan(self, batch_size: int, order: Sequence[int] | None = None) -> list[slice | np.ndarray]:
        """Row selections of each batch: contiguous slices in dataset order, else index arrays."""
        n = len(self)
        if order is None:
            return [slice(start, min(start + batch_size, n)) for start in range(0, n, batch_size)]
        order = np.asarray(order, dtype=np.int64)
        return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]

    def read_batch(self, rows: slice | np.ndarray, pin_memory: bool = False) -> Batch:
        """``(images, indices)`` of one planned batch."""
        indices = torch.arange(rows.start, rows.stop) if isinstance(rows, slice) else torch.from_numpy(rows.copy())
        return self.read(rows, pin_memory), indices.pin_memory() if pin_memory else indices

    def iter_batches(
        self, batch_size: int, order: Sequence[int] | None = None, pin_memory: bool = False,
        readers: int = 1,
    ) -> Iterator[Batch]:
        """Batches in order, read by ``readers`` threads ahead of the consumer."""
        plan = self.plan(batch_size, order)
        if readers <= 1:
            yield from (self.read_batch(rows, pin_memory) for rows in plan)
            return
        yield from ordered_map(lambda rows: self.read_batch(rows, pin_memory), plan,
                               workers=readers, ahead=2 * readers)


def _entry_valid(data: Path, meta_path: Path, key: dict) -> dict | None:
    if not (data.is_file() and meta_path.is_file()):
        return None
    try:
        meta = read_json(meta_path)
    except (OSError, ValueError):
        return None
    if meta.get("key") != key or data.stat().st_size != meta.get("bytes"):
        return None
    return meta


def _publish(tmp: Path, data: Path, nbytes: int) -> bool:
    """Give ``tmp`` the final name unless another job got there first; True if ours won.

    A complete file already there (a racing job's) is kept; a truncated one (a crash,
    a full disk) is replaced.
    """
    try:
        os.link(tmp, data)
        return True
    except FileExistsError:
        if data.stat().st_size == nbytes:
            return False
        os.replace(tmp, data)
        return True
    except OSError:  # filesystems without hard links: rename, same bytes either way
        if data.exists() and data.stat().st_size == nbytes:
            return False
        os.replace(tmp, data)
        return True
    finally:
        tmp.unlink(missing_ok=True)


def _human(nbytes: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20)):
        if nbytes >= scale / 4:
            return f"{nbytes / scale:.2f} {unit}"
    return f"{nbytes / 2**10:.1f} KiB"


class PreprocessedCache:
    """Builds and opens cache entries under ``cache_dir``."""

    def __init__(
        self,
        cache_dir: str | os.PathLike,
        *,
        batch_size: int = 64,
        num_workers: int = 0,
        progress: bool = True,
    ):
        self.dir = Path(cache_dir)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.progress = progress

    def paths(self, key: dict) -> tuple[Path, Path]:
        return self.dir / f"{key['entry']}{DATA_SUFFIX}", self.dir / f"{key['entry']}{META_SUFFIX}"

    def lookup(self, dataset: LabeledImages, transform: SplitTransform) -> CachedImages | None:
        key = cache_key(dataset, transform)
        data, meta_path = self.paths(key)
        meta = _entry_valid(data, meta_path, key)
        return CachedImages(data, meta) if meta else None

    def get(self, dataset: LabeledImages, transform: SplitTransform) -> CachedImages:
        """The entry for ``dataset`` under ``transform``, decoding and storing it if absent."""
        if len(dataset) == 0:
            raise CacheError(f"{dataset.name}: no images to cache")
        key = cache_key(dataset, transform)
        data, meta_path = self.paths(key)
        if meta := _entry_valid(data, meta_path, key):
            log.info("%s: reading preprocessed cache %s (%s)", dataset.name, data, _human(meta["bytes"]))
            return CachedImages(data, meta)
        self.dir.mkdir(parents=True, exist_ok=True)
        with file_lock(self.dir / f".{key['entry']}.lock", f"waiting for another job building the cache entry {key['entry']}"):
            meta = _entry_valid(data, meta_path, key)
            if meta is None:
                meta = self._build(dataset, transform, key, data, meta_path)
        return CachedImages(data, meta)

    def _build(
        self, dataset: LabeledImages, transform: SplitTransform, key: dict, data: Path, meta_path: Path
    ) -> dict:
        first, _ = DecodedImages(dataset, transform.to_uint8)[0]
        shape = (len(dataset), *first.shape)
        nbytes = int(np.prod(shape))
        free = shutil.disk_usage(self.dir).free
        if nbytes > free:
            raise CacheError(
                f"{dataset.name}: the preprocessed cache needs {_human(nbytes)} in {self.dir} but only "
                f"{_human(free)} is free; point eval.cache.dir elsewhere or set eval.cache.enabled=false"
            )
        self._remove_abandoned(key)
        log.info("%s: building preprocessed cache %s (%s)", dataset.name, data, _human(nbytes))
        started = time.perf_counter()
        tmp = make_temp(data)
        try:
            with open(tmp, "wb") as out:
                self._write_images(dataset, transform, shape, out)
                out.flush()
                os.fsync(out.fileno())
            apply_umask(tmp)
            won = _publish(tmp, data, nbytes)
        finally:
            tmp.unlink(missing_ok=True)
        meta = {
            "key": key,
            "dataset": dataset.name,
            "root": dataset.root,
            "shape": list(shape),
            "dtype": "uint8",
            "bytes": nbytes,
            "mean": list(transform.mean),
            "std": list(transform.std),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "build_seconds": round(time.perf_counter() - started, 3),
        }
        if won or not meta_path.exists():
            atomic_write_json(meta_path, meta)
        if won:
            self._prune_stale(key)
        log.info(
            "%s: cached %d images (%s) in %.1fs at %s",
            dataset.name, shape[0], _human(nbytes), meta["build_seconds"], data,
        )
        return read_json(meta_path) if not won else meta

    def _write_images(self, dataset: LabeledImages, transform: SplitTransform, shape: tuple, out) -> None:
        source = DecodingSource(dataset, transform.to_uint8, num_workers=self.num_workers)
        bar = tqdm(
            total=shape[0], desc=f"cache {dataset.name}", unit="img", disable=not self.progress,
            leave=False,
        )
        with bar:
            for images, _ in source.iter_batches(self.batch_size):
                if tuple(images.shape[1:]) != tuple(shape[1:]):
                    raise CacheError(
                        f"{dataset.name}: images of shape {tuple(images.shape[1:])} after the eval "
                        f"transform, expected {tuple(shape[1:])}; the transform must crop to a fixed size"
                    )
                out.write(images.numpy().data)
                bar.update(len(images))

    def _remove_abandoned(self, key: dict, idle_seconds: float = 600) -> None:
        """Delete temp files of crashed builds of this entry (a live build keeps writing,
        so its temp file is never idle this long)."""
        remove_stale_temp_files(self.dir, recursive=False, idle_seconds=idle_seconds, prefix=f".{key['entry']}.")

    def _prune_stale(self, key: dict) -> None:
        """Remove entries of the same dataset and transform whose files have changed:
        they can never be read again. Open memory maps of other jobs stay valid."""
        for meta_path in self.dir.glob(f"*{META_SUFFIX}"):
            if meta_path.stem == key["entry"]:
                continue
            try:
                other = read_json(meta_path)["key"]
            except (OSError, ValueError, KeyError, TypeError):
                continue
            same = all(other.get(k) == key[k] for k in ("dataset", "root", "transform", "border_crop"))
            if same and other.get("files") != key["files"]:
                log.info("pruning stale cache entry %s", meta_path.stem)
                meta_path.unlink(missing_ok=True)
                meta_path.with_suffix(DATA_SUFFIX).unlink(missing_ok=True)
