"""Stable content hashes for cache keys and config fingerprints."""

from __future__ import annotations

import functools
import hashlib
import json
import os
from typing import Any


def stable_hash(obj: Any, length: int = 16) -> str:
    """Hash of a JSON-able object, independent of dict ordering."""
    blob = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


def file_sha256(path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_stamp(path: str | os.PathLike) -> tuple[int, int]:
    """``(size, mtime_ns)``: the cheap identity of a file's bytes. Any rewrite changes it;
    ``cp -a`` and ``mv`` keep it. Raises ``OSError`` when the file cannot be read."""
    stat = os.stat(path)
    return stat.st_size, stat.st_mtime_ns


def content_sha256(path: str | os.PathLike) -> str | None:
    """sha256 of a file's bytes (None when there is no such file): an identity that survives
    moving or copying the file. Identities ask for it again and again, so each file is read
    once per process while its size and modification time stay the same."""
    try:
        stamp = file_stamp(path)
    except OSError:
        return None
    return _sha256_once(os.path.realpath(path), *stamp)


@functools.lru_cache(maxsize=64)
def _sha256_once(path: str, size: int, mtime_ns: int) -> str:
    return file_sha256(path)
