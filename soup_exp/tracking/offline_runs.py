"""Read offline W&B runs back from their ``run-<id>.wandb`` files, with no server.

wandb >= 0.19 writes runs with its Go core and ships no supported Python reader of the
file (its old ``wandb.sdk.internal.datastore`` is gone in 0.31), yet offline runs are the
default here and users need to see what a run logged before syncing it. The file is a
LevelDB-style log of ``Record`` protobufs after a 7-byte ``:W&B`` header: this module
walks that log itself and decodes each record with wandb's generated protobuf classes.
"""

from __future__ import annotations

import json
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from soup_exp.errors import SoupExpError

_FILE_HEADER = struct.Struct("<4sHB")  # ident ":W&B", magic 0xBEE1, version
_RECORD_HEADER = struct.Struct("<IHB")  # crc32c, length, type
_BLOCK_SIZE = 32 * 1024
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4
RUN_GLOB = "*run-*"  # offline-run-<time>-<id> and run-<time>-<id> folders under <dir>/wandb/


class WandbFileError(SoupExpError):
    """A ``.wandb`` file that is missing, unreadable or not in the expected format."""


@dataclass
class OfflineRun:
    """What an offline run logged: its config, history rows, summary and run fields."""

    path: Path
    run_id: str | None = None
    name: str | None = None
    group: str | None = None
    job_type: str | None = None
    tags: list[str] = field(default_factory=list)
    start_time: float | None = None  # seconds since the epoch
    exit_code: int | None = None  # None: no exit record (still running, or killed)
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def dir(self) -> Path:
        return self.path.parent

    @property
    def stage(self) -> str | None:
        return self.config.get("stage") or self.job_type

    @property
    def state(self) -> str:
        if self.exit_code is None:
            return "unfinished"
        return "finished" if self.exit_code == 0 else f"failed (exit {self.exit_code})"

    def metric(self, key: str) -> list[Any]:
        """Every logged value of ``key``, in step order."""
        return [row[key] for row in self.history if key in row]

    def last_values(self) -> dict[str, Any]:
        """Each logged key's last value (W&B's own ``_step``/``_runtime``/``_timestamp`` left out), by key:
        wandb-core writes a row's items in no fixed order."""
        last: dict[str, Any] = {}
        for row in self.history:
            last.update({k: v for k, v in row.items() if not k.startswith("_")})
        return dict(sorted(last.items()))

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.run_id, "name": self.name, "stage": self.stage, "state": self.state,
                "exit_code": self.exit_code, "group": self.group, "job_type": self.job_type, "tags": self.tags,
                "start_time": self.start_time, "dir": str(self.dir), "file": str(self.path),
                "steps": len(self.history), "config": self.config, "summary": self.summary,
                "history": self.history}


def wandb_file(run_dir: str | Path) -> Path:
    """The ``run-<id>.wandb`` file inside a run directory (or the file itself)."""
    run_dir = Path(run_dir)
    if run_dir.is_file():
        return run_dir
    files = sorted(run_dir.glob("run-*.wandb"))
    if not files:
        raise WandbFileError(f"no run-*.wandb file in {run_dir}: expected an offline W&B run directory")
    return files[0]


def run_dirs(wandb_dir: str | Path) -> list[Path]:
    """The run folders under a ``wandb/`` directory, oldest first (their names start with
    the start time); wandb's ``latest-run`` link is left out."""
    root = Path(wandb_dir)
    if not root.is_dir():
        raise WandbFileError(f"no W&B directory at {root}: nothing of this experiment was logged to W&B "
                             "(no stage has run, or logger.mode=disabled)")
    return sorted(p for p in root.glob(RUN_GLOB) if p.is_dir() and not p.is_symlink())


def iter_records(path: str | Path) -> Iterator[Any]:
    """Yield the ``wandb_internal_pb2.Record`` messages stored in a ``.wandb`` file."""
    from google.protobuf.message import DecodeError

    record_class = _record_class()
    path = Path(path)
    for index, payload in enumerate(_iter_payloads(path)):
        record = record_class()
        try:
            record.ParseFromString(payload)
        except DecodeError as err:
            raise WandbFileError(f"{path}: record {index + 1} is corrupt ({err}); the run file is damaged") from err
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
    """Decode an offline run: config, every history row, the final summary. ``timeout``:
    seconds to wait for its exit record first (a run that was just finished); 0 reads
    what is on disk now."""
    if timeout > 0:
        wait_until_complete(run_dir, timeout)
    path = wandb_file(run_dir)
    run = OfflineRun(path=path)
    for record in iter_records(path):
        try:
            _apply_record(run, record)
        except ValueError as err:  # a value that is not JSON: damaged bytes the protobuf took
            raise WandbFileError(f"{path}: a {record.WhichOneof('record_type')} record is corrupt ({err}); "
                                 "the run file is damaged") from err
    return run


def _apply_record(run: OfflineRun, record: Any) -> None:
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
            *parents, key = _item_path(item)
            node = run.summary
            for parent in parents:
                node = node.get(parent) if isinstance(node, dict) else None
            if isinstance(node, dict):
                node.pop(key, None)
    elif kind == "exit":
        run.exit_code = int(record.exit.exit_code)


def _record_class() -> Any:
    try:
        from wandb.proto import wandb_internal_pb2
    except ImportError as err:
        raise WandbFileError(f"reading W&B run files needs wandb's protobuf classes "
                             f"(wandb.proto.wandb_internal_pb2): {err}") from err
    return wandb_internal_pb2.Record


def _read_run_record(run: OfflineRun, record: Any) -> None:
    run.run_id = record.run_id or run.run_id
    run.name = record.display_name or run.name
    run.group = record.run_group or run.group
    run.job_type = record.job_type or run.job_type
    run.tags = list(record.tags) or run.tags
    if record.HasField("start_time"):
        run.start_time = record.start_time.seconds + record.start_time.nanos / 1e9
    _apply_items(run.config, record.config.update)


def _apply_items(target: dict[str, Any], items: Any) -> None:
    """Set each item; wandb-core writes media (a table, an image) as one item per field
    under a ``nested_key`` such as ``[key, "_type"]``, put back together here as a dict."""
    for item in items:
        *parents, key = _item_path(item)
        node = target
        for parent in parents:
            node = node.setdefault(parent, {})
            if not isinstance(node, dict):
                raise ValueError(f"{parent!r} is both a value and a group of values")
        node[key] = json.loads(item.value_json) if item.value_json else None


def _item_path(item: Any) -> list[str]:
    return [item.key] if item.key else list(item.nested_key)


def _iter_payloads(path: Path) -> Iterator[bytes]:
    try:
        data = path.read_bytes()
    except OSError as err:
        raise WandbFileError(f"cannot read W&B run file {path}: {err.strerror or err}") from err
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
        if kind > _LAST:
            raise WandbFileError(f"{path}: unknown record type {kind} at byte {offset}; the run file is damaged")
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
