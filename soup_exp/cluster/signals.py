"""Who answers SIGINT, SIGTERM and SIGUSR2 while a stage trains.

SLURM sends a job's signals to every process of the step, so DataLoader workers get them
too. A worker that dies of SIGTERM fails the step it fed ("DataLoader worker is killed by
signal"), and one that inherited submitit's SIGUSR2 handler tries to checkpoint the job
itself. Workers therefore ignore them (:func:`quiet_loader_worker`); the main process
notes the signal (:class:`StopOnSignal`) and acts at the next step boundary, where the
training state is whole and every DDP rank can agree to stop at the same step.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

log = logging.getLogger(__name__)

MAIN_PROCESS_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)


def quiet_loader_worker(worker_id: int) -> None:
    """``worker_init_fn``: leave the job's signals to the main process (a worker still ends
    with it: torch's workers exit when their parent is gone)."""
    for signum in MAIN_PROCESS_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


class StopRequested(BaseException):
    """A signal stopped training after a checkpoint; ``exit_code`` is what a shell reports,
    ``where`` the point it stopped at in the user's words (default ``step N``).

    A ``BaseException``, like ``KeyboardInterrupt``: Hydra must not store it as the job's
    failed result (the job has not failed; SLURM requeues it, or the user reruns it)."""

    def __init__(self, signum: int, step: int, checkpoint: str, where: str | None = None) -> None:
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        self.where = where or f"step {step}"
        self.exit_code = 128 + signum
        super().__init__(f"{signal.Signals(signum).name} at {self.where}; checkpoint {checkpoint}")


def _is_default(handler: Any, signum: int) -> bool:
    return handler in (signal.SIG_DFL, None) or (signum == signal.SIGINT and handler is signal.default_int_handler)


def _from_submitit(handler: Any) -> bool:
    return getattr(getattr(handler, "__self__", None), "__module__", "").startswith("submitit")


class StopOnSignal:
    """While active, SIGINT/SIGTERM/SIGUSR2 are noted instead of acted on at once.

    A signal is taken over only when nobody else handles it: the default handlers, and
    submitit's (SIGTERM, which it ignores, and SIGUSR2, which requeues the job: deferred
    here until the checkpoint is written). A user's own handler is left alone.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2)

    def __init__(self) -> None:
        self.signum = 0
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is not threading.main_thread():
            return self  # only the main thread may set handlers; its own stay in charge
        for signum in self.SIGNALS:
            current = signal.getsignal(signum)
            if _is_default(current, signum) or _from_submitit(current):
                self._previous[signum] = current
                signal.signal(signum, self._note)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()

    def _note(self, signum: int, frame: FrameType | None) -> None:
        if not self.signum:
            log.warning("%s received: stopping after this step, with a checkpoint", signal.Signals(signum).name)
        self.signum = self.signum or signum

    def agreed(self, distributed: bool, device: Any) -> int:
        """The signal any rank has received (0: none), the same on every rank."""
        if not distributed:
            return self.signum
        import torch

        flag = torch.tensor([self.signum], dtype=torch.int32, device=device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return int(flag.item())

    def leave(self, signum: int, step: int, checkpoint: str, where: str | None = None) -> None:
        """After the checkpoint: hand a SIGUSR2 to submitit (it requeues the job and exits;
        it does so on global rank 0 only, so the other ranks leave here), else stop."""
        previous: Callable | Any = self._previous.get(signum)
        self.__exit__()
        if signum == signal.SIGUSR2 and _from_submitit(previous):
            previous(signum, None)
            sys.exit(0)
        raise StopRequested(signum, step, checkpoint, where)


def run_forwarding_signals(command: list[str]) -> int:
    """Run ``command`` to its end; a SIGINT or SIGTERM to this process is passed on to it
    and waited for, so a stopped parent never leaves a child writing on its own.

    The child has its own process group, so a terminal's Ctrl-C reaches it once, from here.
    Returns its exit status (``128 + signal`` when a signal ended it).
    """
    import subprocess

    child = subprocess.Popen(command, process_group=0)

    def forward(signum: int, frame: FrameType | None) -> None:
        log.warning("%s received: passing it on to %s and waiting for it", signal.Signals(signum).name, command[2])
        child.send_signal(signum)

    previous = {signum: signal.signal(signum, forward) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = child.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return 128 - code if code < 0 else code
