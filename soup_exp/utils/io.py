"""Atomic file writes and safe reads.

Every artefact soup-exp produces (weights, ingredient/soup metadata, results, splits,
caches) is written to a temporary file in the destination directory and renamed into
place, so a crash or preemption never leaves a half-written file under the final name.
Temporary files are named ``.<name>.<pid>@<host>.<random>.tmp``: the next run of a stage
removes the ones whose writer is gone (:func:`remove_stale_temp_files`). A write that
fails for want of space or permission is a :class:`WriteError` naming the file.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import shutil
import socket
import struct
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from soup_exp.errors import SoupExpError

log = logging.getLogger(__name__)

# Errors of the storage, not of the program: reported as one line naming the file.
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS})
_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
STALE_TEMP_SECONDS = 15 * 60  # a live writer touches its temp file far more often than this
_HOST = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname().split(".")[0]) or "host"
# the names make_temp gives, and the only files temp-file cleanup ever removes
_TEMP_NAME = re.compile(r"^\..+\.(\d+)@([A-Za-z0-9_-]+)\.[A-Za-z0-9_]+\.tmp$")


class WriteError(SoupExpError, OSError):
    """A file could not be written (no space, no permission, a read-only filesystem)."""

    def __str__(self) -> str:  # the message alone, whatever errno and filename say
        return str(self.args[0]) if self.args else ""


def write_error(path: str | os.PathLike, err: OSError, size: int | None = None) -> WriteError:
    """One clear message for a failed write of ``path``: what failed and what to do."""
    path = Path(path)
    reason = err.strerror or str(err)
    if err.errno in _SPACE_ERRNOS:
        free = _free_bytes(path.parent)
        needed = f"{human_bytes(size)} needed" if size is not None else "size unknown"
        have = f"{human_bytes(free)} free" if free is not None else "free space unknown"
        hint = "free some space or write elsewhere (paths.output_dir=..., paths.cache_dir=...)"
        message = f"cannot write {path}: {reason} ({needed}, {have} in {_existing(path.parent)}); {hint}"
    else:
        message = (f"cannot write {path}: {reason} ({_existing(path.parent)} is not writable by this user); "
                   "choose another output location (paths.output_dir=... or SOUP_OUTPUT_DIR) or fix its permissions")
    error = WriteError(message)
    error.errno, error.filename = err.errno, str(path)
    return error


def human_bytes(n: int | None) -> str:
    if n is None:
        return "?"
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def _existing(path: Path) -> Path:
    """``path`` or its nearest existing ancestor (where the filesystem is)."""
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


def _free_bytes(directory: Path) -> int | None:
    try:
        return shutil.disk_usage(_existing(directory)).free
    except OSError:
        return None


def make_temp(path: str | os.PathLike) -> Path:
    """An empty temp file next to ``path``, named for :func:`remove_stale_temp_files`."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}@{_HOST}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    return Path(tmp)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, size: int | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success.

    The file gets the permissions of a plain ``open()`` under the user's umask (temp files
    are created 0600), so teammates on shared storage can read results. A temp file that
    was replaced by a hard link to an existing file keeps that file's mode. ``size`` (the
    bytes about to be written, when known) is checked against the free space first.
    Running out of space or permission is a :class:`WriteError` naming ``path``.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        free = _free_bytes(path.parent) if size is not None else None
        if free is not None and size > free:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        tmp_path = make_temp(path)
    except OSError as err:
        if err.errno in STORAGE_ERRNOS:
            raise write_error(path, err, size) from err
        raise
    try:
        yield tmp_path
        if tmp_path.stat().st_nlink == 1:
            apply_umask(tmp_path)
        fd = os.open(tmp_path, os.O_RDONLY)  # read-only: a linked ingredient may be write-protected
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp_path, path)
    except OSError as err:
        ours = err.filename is None or str(err.filename) in (str(tmp_path), str(path))
        if err.errno in STORAGE_ERRNOS and ours and not isinstance(err, WriteError):
            raise write_error(path, err, size) from err
        raise
    finally:
        tmp_path.unlink(missing_ok=True)


def apply_umask(path: str | os.PathLike) -> None:
    """Give a file made by ``mkstemp`` (mode 0600) the mode a plain ``open()`` would."""
    os.chmod(path, 0o666 & ~current_umask())


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path, size=len(data)) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=json_default) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def why_unreadable(path: str | os.PathLike) -> str | None:
    """Why this process cannot open ``path`` for reading (``None`` if it can). safetensors
    reports a permission problem as "No such file or directory", which misleads on shared
    storage, so a reader whose read failed asks the OS why."""
    try:
        os.close(os.open(path, os.O_RDONLY))
    except OSError as err:
        if err.errno in (errno.EACCES, errno.EPERM):
            return f"permission denied for user {_user_name()} (uid {os.geteuid()})"
        return err.strerror or str(err)
    return None


def _user_name() -> str:
    import pwd

    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


def atomic_save_safetensors(
    tensors: Mapping[str, torch.Tensor],
    path: str | os.PathLike,
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Save a flat tensor dict as safetensors, atomically; tensors are made contiguous."""
    from safetensors.torch import save_file

    flat = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    size = sum(t.numel() * t.element_size() for t in flat.values())
    with atomic_path(path, size=size) as tmp:
        try:
            save_file(flat, str(tmp), metadata=dict(metadata) if metadata else None)
        except Exception as err:  # safetensors reports I/O failures as its own error type
            code = re.search(r"code: (\d+)|os error (\d+)", str(err))
            if code is None:
                raise
            number = int(code.group(1) or code.group(2))
            raise OSError(number, os.strerror(number), str(tmp)) from err
        if metadata:
            sort_safetensors_metadata(tmp)


def sort_safetensors_metadata(path: str | os.PathLike) -> None:
    """Rewrite a safetensors header with its ``__metadata__`` keys sorted.

    safetensors writes the metadata in hash order, which changes from process to process,
    so identical runs would write different bytes. Sorted, they write identical files."""
    with open(path, "r+b") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
        header["__metadata__"] = dict(sorted(header.get("__metadata__", {}).items()))
        text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
        if len(text) <= length:  # the same entries, reordered: the same length in practice
            f.seek(8)
            f.write(text.ljust(length, b" "))
            return
        padded = text.ljust(-(-len(text) // 8) * 8, b" ")
        rewritten = make_temp(path)
        with open(rewritten, "wb") as out:
            out.write(struct.pack("<Q", len(padded)) + padded)
            shutil.copyfileobj(f, out)
    os.replace(rewritten, path)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` through a temp file; for training checkpoints we wrote ourselves.

    torch's zip writer reports a failed write (a full disk) as ``RuntimeError: ... unexpected
    pos``, without an errno; that is the disk-full :class:`WriteError` naming ``path``."""
    size = tensor_bytes(obj)
    with atomic_path(path, size=size) as tmp:
        try:
            torch.save(obj, tmp)
        except RuntimeError as err:
            if not _TORCH_WRITE_FAILED.search(str(err)):
                raise
            tmp.unlink(missing_ok=True)  # so the message counts the space it held as free
            raise write_error(path, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)), size) from err


_TORCH_WRITE_FAILED = re.compile(r"unexpected pos|PytorchStreamWriter failed writing|file write failed")


def tensor_bytes(obj: Any) -> int:
    """The bytes of every tensor in a (nested) dict/list: at least what saving it needs."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, Mapping):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(tensor_bytes(v) for v in obj)
    return 0


def safe_torch_load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """Load a torch file without unpickling arbitrary objects."""
    return torch.load(path, map_location=map_location, weights_only=True)


def json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, set | tuple):
        return list(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


@contextlib.contextmanager
def file_lock(path: str | os.PathLike, waiting: str | None = None) -> Iterator[None]:
    """Exclusive inter-process lock on ``path`` (the ``filelock`` package) for the block.

    Serialises work that concurrent sweep jobs would otherwise do twice (data
    generation, pretraining, cache builds) or interleave (results rows). ``waiting`` is
    logged when another process holds the lock.
    """
    from filelock import FileLock, Timeout

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        if waiting:
            logging.getLogger(__name__).info("%s", waiting)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def remove_stale_temp_files(directory: str | os.PathLike, recursive: bool = True,
                            idle_seconds: float = STALE_TEMP_SECONDS, prefix: str = ".") -> list[Path]:
    """Delete temp files left in ``directory`` by killed writers: only names that
    :func:`make_temp` gives (``.<name>.<pid>@<host>.<random>.tmp``); a user's ``x.tmp`` or
    ``.tmpfoo`` is never touched.

    A temp file is stale when its writer (``<pid>@<host>`` in its name) was a process on
    this host that has exited, or when nobody touched it for ``idle_seconds`` (a writer on
    another host). A live writer's file is never removed. Each stage calls this on the
    directories it writes, at its start.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    removed = []
    for root, _dirs, files in os.walk(directory):
        for name in files:
            if name.startswith(prefix) and _TEMP_NAME.match(name):
                candidate = Path(root) / name
                if _abandoned(candidate, idle_seconds):
                    with contextlib.suppress(FileNotFoundError):
                        candidate.unlink()
                        removed.append(candidate)
        if not recursive:
            break
    for path in removed:
        log.info("removed %s, left by an interrupted write", path)
    return removed


def _abandoned(path: Path, idle_seconds: float) -> bool:
    writer = _TEMP_NAME.match(path.name)
    if writer is not None and writer.group(2) == _HOST:
        pid = int(writer.group(1))
        return pid != os.getpid() and not _process_alive(pid)
    try:
        return time.time() - path.stat().st_mtime > idle_seconds
    except OSError:
        return False


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True
