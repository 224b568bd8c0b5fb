"""Run test code in a forked child: one that may be killed (``kill -9``) at a chosen point,
or one where file permissions hold even when the tests run as root.

Root ignores read-only modes, so a test that write-protects a file would pass whether or
not the code needs write access. ``run_in_child(fn, unprivileged=True)`` drops to the
``nobody`` user before calling ``fn``; ``shared_dir`` makes a folder that user can reach
(pytest's own temp root is private to its owner). Such a child may not be able to read
the Python installation either: import what ``fn`` needs before calling it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

NOBODY = 65534


def kill_before_commit(n: int) -> None:
    """Make this process die by SIGKILL just before its ``n``-th ``os.replace``: the commit
    of an atomic write, whose temp file is then complete but not in place (or equally,
    right after the commit before). For children of :func:`run_in_child` only."""
    real, count = os.replace, [0]

    def replace(src: str | os.PathLike, dst: str | os.PathLike) -> None:
        count[0] += 1
        if count[0] == n:
            os.kill(os.getpid(), signal.SIGKILL)
        real(src, dst)

    os.replace = replace


CHILD_TIMEOUT_S = 600


def run_in_child(fn: Callable[[], object], unprivileged: bool = False,
                 timeout: float = CHILD_TIMEOUT_S) -> tuple[int, str]:
    """``fn()`` in a forked child (without root's override when ``unprivileged``);
    ``(exit status, or minus the signal that killed it; stderr)``. A child still running
    after ``timeout`` seconds is killed and the test fails with what it wrote."""
    with tempfile.TemporaryFile() as err:
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the child never returns into pytest
            status = 1
            try:
                _one_torch_thread()
                os.dup2(err.fileno(), 2)
                sys.stderr = os.fdopen(2, "w", buffering=1)
                if unprivileged and os.geteuid() == 0:
                    os.setgid(NOBODY)
                    os.setuid(NOBODY)
                fn()
                status = 0
            except SystemExit as exit_:
                status = exit_.code if isinstance(exit_.code, int) else 1
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stderr.flush()
                os._exit(status)
        wait_status = _wait(pid, timeout)
        err.seek(0)
        shown = err.read().decode(errors="replace")
        if wait_status is None:
            raise AssertionError(f"the forked child was still running after {timeout:.0f} s and was killed; "
                                 f"its stderr:\n{shown[-3000:]}")
        return os.waitstatus_to_exitcode(wait_status), shown


def _one_torch_thread() -> None:
    """OpenMP's thread pool does not survive fork: a child whose parent ran torch on several
    threads waits forever in its first parallel op for threads it does not have."""
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(1)


def _wait(pid: int, timeout: float) -> int | None:
    """The child's wait status, or None once it has run ``timeout`` seconds (it is then killed)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, wait_status = os.waitpid(pid, os.WNOHANG)
        if done:
            return wait_status
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return None


def interpreter_runs_as_nobody() -> bool:
    """Whether ``nobody`` can start this Python (a pyenv under a 0700 ``/root`` is private)."""
    import subprocess

    try:
        return subprocess.run([sys.executable, "-c", "pass"], user=NOBODY, group=NOBODY,
                              capture_output=True, timeout=60).returncode == 0
    except PermissionError:
        return False


@contextlib.contextmanager
def shared_dir() -> Iterator[Path]:
    """A temporary folder everyone can enter and write (mode 0777)."""
    root = Path(tempfile.mkdtemp(prefix="soup-exp-shared-"))
    root.chmod(0o777)
    try:
        yield root
    finally:
        for path in [root, *root.rglob("*")]:
            with contextlib.suppress(OSError):
                path.chmod(0o777 if path.is_dir() else 0o666)
        shutil.rmtree(root, ignore_errors=True)


def write_protect(root: Path) -> None:
    """Every file under ``root`` read-only (0444), every folder 0555."""
    for path in sorted(root.rglob("*"), reverse=True):
        path.chmod(0o555 if path.is_dir() else 0o444)
    root.chmod(0o555)
