"""Test support: read an offline W&B run back from its ``run-<id>.wandb`` file.

wandb >= 0.19 writes runs with its Go core and no longer ships a Python reader, yet
offline runs are the default here and users (and tests) need to check what a run
logged before syncing it. The file is a LevelDB-style log of ``Record`` protobufs
after a 7-byte ``:W&B`` header, so a small reader over wandb's own protobuf classes
suffices.
"""

from __future__ import annotations

import json
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_FILE_HEADER = struct.Struct("<4sHB")  # ident ":W&B", magic 0xBEE1, version
_RECORD_HEADER = struct.Struct("<IHB")  # crc32c, length, type
_BLOCK_SIZE = 32 * 1024
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


class WandbFileError(Exception):
    """A ``.wandb`` file that is missing or not in the expected format."""


@dataclass
class OfflineRun:
    """What an offline run logged: its config, history rows, summary and run fields."""

    path: Path
    run_id: str | None = None
    name: str | None = None
    group: str | None = None
    job_type: str | None = None
    tags: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)

    def metric(self, key: str) -> list[Any]:
        """Every logged value of ``key``, in step order."""
        return [row[key] for row in self.history if key in row]


def wandb_file(run_dir: str | Path) -> Path:
    """The ``run-<id>.wandb`` file inside a run directory (or the file itself)."""
    run_dir = Path(run_dir)
    if run_dir.is_file():
        return run_dir
    files = sorted(run_dir.glob("run-*.wandb"))
    if not files:
        raise WandbFileError(f"no run-*.wandb file in {run_dir}: expected an offline W&B run directory")
    return files[0]


def iter_records(path: str | Path) -> Iterator[Any]:
    """Yield the ``wandb_internal_pb2.Record`` messages stored in a ``.wandb`` file."""
    from wandb.proto import wandb_internal_pb2

    for payload in _iter_payloads(Path(path)):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        yield record


def wait_until_complete(run_dir: str | Path, timeout: float = 15.0) -> bool:
    """Wait until the run's exit record is on disk: ``wandb.finish()`` can return before
    wandb's core process has flushed the file (it does flush before the process exits)."""
    deadline = time.monotonic() + timeout
    delay = 0.02
    while True:
        try:
            if any(r.WhichOneof("record_type") == "exit" for r in iter_records(wandb_file(run_dir))):
                return True
        except WandbFileError:
            pass  # not created or header not written yet
        if time.monotonic() >= deadline:
            return False
        time.sleep(delay)
        delay = min(delay * 2, 0.5)


def read_offline_run(run_dir: str | Path, timeout: float = 15.0) -> OfflineRun:
    """Decode an offline run: config, every history row, the final summary (after waiting up
    to ``timeout`` seconds for its exit record)."""
    wait_until_complete(run_dir, timeout)
    path = wandb_file(run_dir)
    run = OfflineRun(path=path)
    for record in iter_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            _read_run_record(run, record.run)
        elif kind == "config":
            _apply_items(run.config, record.config.update)
        elif kind == "history":
            row: dict[str, Any] = {}
            _apply_items(row, record.history.item)
            run.history.append(row)
        elif kind == "summary":
            _apply_items(run.summary, record.summary.update)
            for item in record.summary.remove:
                run.summary.pop(item.key, None)
    return run


def _read_run_record(run: OfflineRun, record: Any) -> None:
    run.run_id = record.run_id or run.run_id
    run.name = record.display_name or run.name
    run.group = record.run_group or run.group
    run.job_type = record.job_type or run.job_type
    run.tags = list(record.tags) or run.tags
    _apply_items(run.config, record.config.update)


def _apply_items(target: dict[str, Any], items: Any) -> None:
    for item in items:
        key = item.key or "/".join(item.nested_key)
        target[key] = json.loads(item.value_json) if item.value_json else None


def _iter_payloads(path: Path) -> Iterator[bytes]:
    try:
        data = path.read_bytes()
    except OSError as err:
        raise WandbFileError(f"cannot read W&B run file {path}: {err}") from err
    if len(data) < _FILE_HEADER.size or _FILE_HEADER.unpack_from(data)[0] != b":W&B":
        raise WandbFileError(f"{path} is not a W&B run file (missing ':W&B' header)")
    offset, pending = _FILE_HEADER.size, b""
    while offset + _RECORD_HEADER.size <= len(data):
        left_in_block = _BLOCK_SIZE - offset % _BLOCK_SIZE
        if left_in_block < _RECORD_HEADER.size:
            offset += left_in_block  # block trailer padding
            continue
        _, length, kind = _RECORD_HEADER.unpack_from(data, offset)
        start = offset + _RECORD_HEADER.size
        if kind == 0 or start + length > len(data):
            break  # zero padding or a record cut off by a crash: stop at the last whole one
        chunk = data[start : start + length]
        offset = start + length
        if kind == _FULL:
            yield chunk
        elif kind == _FIRST:
            pending = chunk
        elif kind == _MIDDLE:
            pending += chunk
        elif kind == _LAST:
            yield pending + chunk
            pending = b""
