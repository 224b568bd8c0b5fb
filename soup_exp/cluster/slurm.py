"""What the SLURM controller says about jobs and partitions, through its own commands.

Job states come from ``sacct`` while accounting answers, else from ``squeue`` (which
also lists jobs that ended less than ``MinJobAge`` ago): a cluster without accounting
never leaves a submitter waiting on jobs it cannot see. ``sacct`` is not the last word
either: it does not list a job slurmdbd has not heard of yet, and it shows ``PREEMPTED``
both for a job that is gone and (until the requeue reaches accounting) for one SLURM has
requeued, so for those jobs ``squeue`` decides. A job neither command knows any more has
``GONE``.
"""

from __future__ import annotations

import logging
import re
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass

log = logging.getLogger(__name__)

LIVE_STATES = frozenset({
    "PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "COMPLETING", "CONFIGURING",
    "SUSPENDED", "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED", "RESV_DEL_HOLD",
    "UNKNOWN",
})
GONE = "GONE"
# sacct's word that squeue must confirm: PREEMPTED is final unless the job was requeued
SACCT_UNSURE = frozenset({"PREEMPTED", "UNKNOWN"})


def _run(command: list[str]) -> subprocess.CompletedProcess:
    """``command``'s result; a missing or hung command is a failed one, not an exception."""
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as err:
        return subprocess.CompletedProcess(command, 127, "", f"{command[0]}: {err}")


def _first_line(done: subprocess.CompletedProcess) -> str:
    return (done.stderr.strip() or f"exit {done.returncode}").splitlines()[0]


def _main_id(job_id: str) -> str:
    return job_id.split("_", 1)[0]


def _parse_states(text: str) -> dict[str, str]:
    """``JOBID|STATE`` lines; ``3_[2-5]`` (pending array elements) expands, ``CANCELLED by 0`` is ``CANCELLED``."""
    states: dict[str, str] = {}
    for line in text.splitlines():
        job_id, _, state = line.strip().partition("|")
        if not job_id or "." in job_id:
            continue
        state = state.split(" ", 1)[0].rstrip("+") or "UNKNOWN"
        ranged = re.fullmatch(r"(\d+)_\[(.+)\]", job_id)
        if not ranged:
            states[job_id] = state
            continue
        for part in ranged.group(2).split("%", 1)[0].split(","):
            low, _, high = part.partition("-")
            for index in range(int(low), int(high or low) + 1):
                states[f"{ranged.group(1)}_{index}"] = state
    return states


class JobStates:
    """States of submitted jobs; says once (not per poll) when accounting is unavailable,
    and once per outage when the controller does not answer."""

    def __init__(self) -> None:
        self.accounting: bool | None = None  # None: not asked yet
        self._squeue_failing = False

    def query(self, job_ids: Iterable[str]) -> dict[str, str]:
        """Each job's state: sacct's, unless it is unsure (see :data:`SACCT_UNSURE`) or silent,
        then squeue's; a job squeue does not list keeps sacct's final ``PREEMPTED``, else is ``GONE``."""
        job_ids = list(job_ids)
        listed: dict[str, str] = {}
        if self.accounting is not False:
            mains = sorted({_main_id(j) for j in job_ids})
            done = _run(["sacct", "-X", "-n", "-P", "-o", "JobID,State", *(f"-j{m}" for m in mains)])
            if done.returncode == 0:
                self.accounting = True
                listed = _parse_states(done.stdout)
            else:
                self.accounting = False
                log.warning("SLURM accounting does not answer (sacct: %s); following the jobs with squeue instead",
                            _first_line(done))
        states = {j: listed[j] for j in job_ids if listed.get(j, "UNKNOWN") not in SACCT_UNSURE}
        unsure = [j for j in job_ids if j not in states]
        if unsure:
            queued = self._squeue(unsure)
            for job_id in unsure:
                if queued is None:
                    states[job_id] = "UNKNOWN"
                else:
                    states[job_id] = queued.get(job_id) or ("PREEMPTED" if listed.get(job_id) == "PREEMPTED" else GONE)
        return {j: states[j] for j in job_ids}

    def _squeue(self, job_ids: list[str]) -> dict[str, str] | None:
        """squeue's states of ``job_ids`` (jobs it does not list are absent), or None when
        the controller does not answer (the jobs may well live on: asked again next poll)."""
        mains = sorted({_main_id(j) for j in job_ids})
        done = _run(["squeue", "-h", "-r", "-t", "all", "-o", "%i|%T", "-j", ",".join(mains)])
        if done.returncode != 0 and "Invalid job id" not in done.stderr:  # one unknown id: an error, not empty
            if not self._squeue_failing:
                log.warning("squeue does not answer (%s); asking again at the next poll", _first_line(done))
            self._squeue_failing = True
            return None
        self._squeue_failing = False
        return _parse_states(done.stdout) if done.returncode == 0 else {}


@dataclass(frozen=True)
class Partition:
    """The largest node of a partition, and its limits (from ``sinfo``)."""

    name: str
    cpus: int
    memory_mb: int
    gpus: int
    nodes: int
    time_limit_min: int | None  # None: no limit

    @classmethod
    def parse(cls, name: str, lines: Iterable[str]) -> Partition:
        rows = [line.split("|") for line in lines if line.strip()]
        return cls(name=name, cpus=max(int(r[0].rstrip("+")) for r in rows),
                   memory_mb=max(int(r[1].rstrip("+")) for r in rows),
                   gpus=max(_gpus(r[2]) for r in rows), nodes=sum(int(r[4]) for r in rows),
                   time_limit_min=_minutes(rows[0][3]))


def _gpus(gres: str) -> int:
    """``gpu:4``, ``gpu:a100:8(S:0-1)``, ``(null)`` -> GPUs per node."""
    counts = [int(m.group(1)) for m in re.finditer(r"gpu(?::[\w-]+)?:(\d+)", gres)]
    return max(counts, default=0)


def _minutes(limit: str) -> int | None:
    """sinfo's ``%l``: ``infinite``, ``30:00``, ``2:00:00``, ``1-12:00:00`` -> minutes."""
    if limit in {"infinite", "UNLIMITED", "n/a"}:
        return None
    days, _, clock = limit.rpartition("-")
    parts = [int(p) for p in clock.split(":")]
    hours, minutes, seconds = ([0] * (3 - len(parts)) + parts) if len(parts) > 1 else (0, parts[0], 0)
    return int(days or 0) * 1440 + hours * 60 + minutes + (1 if seconds else 0)


def partitions() -> tuple[dict[str, list[str]], str | None]:
    """Every partition's ``sinfo`` rows (cpus|memory|gres|timelimit|nodes), and the default one."""
    done = _run(["sinfo", "-h", "-o", "%P|%c|%m|%G|%l|%D"])
    if done.returncode != 0:
        raise OSError(f"sinfo failed: {(done.stderr.strip() or f'exit {done.returncode}').splitlines()[0]}")
    rows: dict[str, list[str]] = {}
    default = None
    for line in done.stdout.splitlines():
        name, _, rest = line.partition("|")
        if name.endswith("*"):
            name = default = name[:-1]
        rows.setdefault(name, []).append(rest)
    return rows, default
