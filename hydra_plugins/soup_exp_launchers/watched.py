"""submitit launchers that show what they launched and how it goes.

hydra-submitit-launcher submits every job of a multirun, then waits in silence until the
last one ends (minutes to days). These launchers do the same submission, then say at once
which jobs run where and where each one logs, and while they wait print a progress line
whenever a job changes state (and every ``PROGRESS_EVERY_S`` seconds), with the latest
progress-bar line of each running job. ``conf/launcher/{submitit_local,slurm}.yaml`` select
them; soup-exp registers them with Hydra when a stage starts.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, filter_overrides
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import (
    BaseSubmititLauncher,
    LocalLauncher,
    SlurmLauncher,
)
from omegaconf import OmegaConf

from soup_exp.utils.text import plural

log = logging.getLogger(__name__)

POLL_S = 2.0
PROGRESS_EVERY_S = 30.0
TAIL_BYTES = 4096
DONE_STATES = {"FINISHED", "COMPLETED", "DONE"}


class WatchedLaunch:
    """``launch`` of hydra-submitit-launcher 1.2 (same executor, parameters and jobs),
    followed by :func:`watch` instead of a silent wait."""

    def launch(self: Any, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        import submitit

        executor = submitit.AutoExecutor(cluster=self._EXECUTOR, **_init_params(self))
        executor.update_parameters(**_job_params(self))
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if "mode" in self.config.hydra.sweep:
            os.chmod(sweep_dir, mode=int(str(self.config.hydra.sweep.mode), 8))
        labels, job_params = [], []
        for offset, overrides in enumerate(job_overrides):
            number = initial_job_idx + offset
            labels.append(f"#{number} {' '.join(filter_overrides(overrides))}")
            job_params.append((list(overrides), "hydra.sweep.dir", number, f"job_id_for_{number}",
                               Singleton.get_state()))
        jobs = executor.map_array(self, *zip(*job_params, strict=True))
        announce(jobs, labels, self._EXECUTOR, sweep_dir)
        watch(jobs, labels)
        return [job.results()[0] for job in jobs]


def _init_params(launcher: BaseSubmititLauncher) -> dict[str, Any]:
    params = launcher.params
    init = {"folder": params["submitit_folder"]}
    if "max_num_timeout" in params:
        init[f"{launcher._EXECUTOR}_max_num_timeout"] = params["max_num_timeout"]
    return init


def _job_params(launcher: BaseSubmititLauncher) -> dict[str, Any]:
    shared = set(OmegaConf.structured(BaseQueueConf).keys())
    return {key if key in shared else f"{launcher._EXECUTOR}_{key}": value
            for key, value in launcher.params.items()
            if key not in {"submitit_folder", "max_num_timeout"}}


def announce(jobs: Sequence[Any], labels: Sequence[str], executor: str, sweep_dir: Path) -> None:
    """Each job's id and log files, and where Hydra's per-job outputs go."""
    log.info("submitted %s (%s); Hydra's per-job logs and configs: %s/<job number>/",
             plural(len(jobs), "job"), executor, sweep_dir)
    for job, label in zip(jobs, labels, strict=True):
        log.info("  %s -> job %s, output %s (stderr: %s)", label, job.job_id, job.paths.stdout, job.paths.stderr.name)


def watch(jobs: Sequence[Any], labels: Sequence[str], poll_s: float = POLL_S,
          every_s: float = PROGRESS_EVERY_S) -> None:
    """Until every job is done: a status line when a job's state changes, else every ``every_s``."""
    start = last_print = time.monotonic()
    last_states: list[str] = []
    while True:
        done = [job.done() for job in jobs]
        states = [state_of(job, finished) for job, finished in zip(jobs, done, strict=True)]
        now = time.monotonic()
        if states != last_states or now - last_print >= every_s or all(done):
            log.info("%s", status_line(jobs, labels, states, now - start))
            last_states, last_print = states, now
        if all(done):
            return
        time.sleep(poll_s)


def state_of(job: Any, finished: bool) -> str:
    try:
        state = str(job.state).upper()
    except Exception:  # a scheduler that cannot be asked right now
        state = "UNKNOWN"
    return "FINISHED" if finished and state in {"RUNNING", "UNKNOWN", "PENDING"} else state


def status_line(jobs: Sequence[Any], labels: Sequence[str], states: Sequence[str], elapsed: float) -> str:
    counts = Counter("done" if s in DONE_STATES else s.lower() for s in states)
    parts = [f"{counts.pop('done', 0)}/{len(jobs)} done"] + [f"{n} {state}" for state, n in sorted(counts.items())]
    lines = [f"[{int(elapsed) // 60}:{int(elapsed) % 60:02d}] {', '.join(parts)}"]
    for job, label, state in zip(jobs, labels, states, strict=True):
        if state == "RUNNING":
            lines.append(f"    {label.split(' ')[0]} running: {latest_progress(job.paths.stderr) or 'starting'}")
        elif state not in DONE_STATES | {"PENDING", "UNKNOWN"}:
            lines.append(f"    {label.split(' ')[0]} {state.lower()}: see {job.paths.stderr}")
    return "\n".join(lines)


def latest_progress(path: Path) -> str:
    """The last progress-bar (or log) line a job wrote to ``path``."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, path.stat().st_size - TAIL_BYTES))
            tail = f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    pieces = [p.strip() for p in tail.replace("\r", "\n").split("\n")]
    latest = next((p for p in reversed(pieces) if p), "")
    return latest if len(latest) <= 140 else latest[:137] + "..."


class WatchedLocalLauncher(WatchedLaunch, LocalLauncher):
    """``launcher=submitit_local``: jobs as local processes, watched."""


class WatchedSlurmLauncher(WatchedLaunch, SlurmLauncher):
    """``launcher=slurm``: a SLURM job array, watched from the submitting shell."""
