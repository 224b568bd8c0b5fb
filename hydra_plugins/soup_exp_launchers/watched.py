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
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import (
    BaseSubmititLauncher,
    LocalLauncher,
    SlurmLauncher,
)
from omegaconf import OmegaConf

from soup_exp.cluster.slurm import GONE, LIVE_STATES, JobStates
from soup_exp.errors import ConfigError, SoupExpError
from soup_exp.utils.text import plural

log = logging.getLogger(__name__)

POLL_S = 2.0
SCHEDULER_EVERY_S = 10.0  # sacct/squeue: a cluster's controller is shared
PROGRESS_EVERY_S = 30.0
TAIL_BYTES = 4096
DONE_STATES = {"FINISHED", "COMPLETED", "DONE"}


class WatchedLaunch:
    """``launch`` of hydra-submitit-launcher 1.2 (same executor, parameters and jobs), but
    members whose work is already done are not submitted, and :func:`watch` follows the
    others instead of a silent wait."""

    def launch(self: Any, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        import submitit

        self.before_submission()
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if "mode" in self.config.hydra.sweep:
            os.chmod(sweep_dir, mode=int(str(self.config.hydra.sweep.mode), 8))
        returns: dict[int, JobReturn] = {}
        labels, job_params, offsets = [], [], []
        for offset, overrides in enumerate(job_overrides):
            number = initial_job_idx + offset
            label = f"#{number} {' '.join(filter_overrides(overrides))}"
            done = finished_output(self, list(overrides), number)
            if done is not None:
                log.info("  %s -> already finished (%s); not submitted", label, done)
                returns[offset] = JobReturn(overrides=list(overrides), status=JobStatus.COMPLETED,
                                            _return_value=done, task_name=self.config.hydra.job.name)
                continue
            labels.append(label)
            offsets.append(offset)
            job_params.append((list(overrides), "hydra.sweep.dir", number, f"job_id_for_{number}",
                               Singleton.get_state()))
        if job_params:
            executor = submitit.AutoExecutor(cluster=self._EXECUTOR, **_init_params(self))
            executor.update_parameters(**_job_params(self))
            jobs = executor.map_array(self, *zip(*job_params, strict=True))
            announce(jobs, labels, self._EXECUTOR, sweep_dir)
            submitted = [params[0] for params in job_params]
            followed = self.follow(jobs, labels, submitted)
            for offset, job_return in zip(offsets, followed, strict=True):
                returns[offset] = job_return
            stop_on_failures(str(self.config.get("stage", "multirun")), labels, followed)
        return [returns[offset] for offset in range(len(job_overrides))]

    def before_submission(self: Any) -> None:
        """Checks of the request against the scheduler (none for local processes)."""

    def follow(self: Any, jobs: Sequence[Any], labels: Sequence[str],
               overrides: Sequence[list[str]]) -> list[JobReturn]:
        watch(jobs, labels, local_progress)
        return [job.results()[0] for job in jobs]


def stop_on_failures(stage: str, labels: Sequence[str], returns: Sequence[JobReturn]) -> None:
    """Failed jobs are listed, one line each, instead of Hydra's traceback of the first."""
    failed = [(label.split(" ")[0], r._return_value) for label, r in zip(labels, returns, strict=True)
              if r.status == JobStatus.FAILED]
    if not failed:
        return
    lines = [f"soup-exp {stage}: {len(failed)} of {plural(len(returns), 'job')} failed "
             "(rerun the same command: finished members are not submitted again)"]
    lines += [f"  {number}: {str(error).splitlines()[0] if str(error) else type(error).__name__}" for number, error in failed]
    print("\n".join(lines), file=sys.stderr)
    sys.exit(1)


def finished_output(launcher: Any, overrides: list[str], number: int) -> Path | None:
    """The output of job ``number`` when the stage says its work is already done."""
    from soup_exp.stages.entry import STAGES
    from soup_exp.stages.preflight import exit_on_user_error
    from soup_exp.utils.resolvers import planned_job

    stage = STAGES.get(str(launcher.config.get("stage")))
    finished = stage.hook("finished") if stage is not None else None
    if finished is None:
        return None
    try:
        with planned_job(number):
            return finished(launcher.hydra_context.config_loader.load_sweep_config(launcher.config, overrides))
    except Exception as err:
        exit_on_user_error(stage, err)
    return None


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


def watch(jobs: Sequence[Any], labels: Sequence[str], progress: Callable[[Sequence[Any]], tuple[list[bool], list[str]]],
          poll_s: float = POLL_S, every_s: float = PROGRESS_EVERY_S) -> None:
    """Until every job is done: a status line when a job's state changes, else every ``every_s``.
    ``progress(jobs)`` says which jobs are done and the state of each."""
    start = last_print = time.monotonic()
    last_states: list[str] = []
    while True:
        done, states = progress(jobs)
        now = time.monotonic()
        if states != last_states or now - last_print >= every_s or all(done):
            log.info("%s", status_line(jobs, labels, states, now - start))
            last_states, last_print = states, now
        if all(done):
            return
        time.sleep(poll_s)


def local_progress(jobs: Sequence[Any]) -> tuple[list[bool], list[str]]:
    done = [job.done() for job in jobs]
    return done, [state_of(job, finished) for job, finished in zip(jobs, done, strict=True)]


def state_of(job: Any, finished: bool) -> str:
    try:
        state = str(job.state).upper()
    except Exception:  # a scheduler that cannot be asked right now
        state = "UNKNOWN"
    return "FINISHED" if finished and state in {"RUNNING", "UNKNOWN", "PENDING"} else state


class SlurmProgress:
    """Job states from the controller (``sacct``, else ``squeue``), asked every
    ``every_s`` seconds. A job is done when SLURM no longer holds it: a requeued job whose
    interrupted run left a result is still running, and one that ended without a result
    (``scancel``, a node failure) is done, and failed."""

    def __init__(self, every_s: float = SCHEDULER_EVERY_S) -> None:
        self.states = JobStates()
        self.every_s = every_s
        self._asked_at = -float("inf")
        self._known: dict[str, str] = {}

    def __call__(self, jobs: Sequence[Any]) -> tuple[list[bool], list[str]]:
        if time.monotonic() - self._asked_at >= self.every_s:
            self._known = self.states.query(job.job_id for job in jobs)
            self._asked_at = time.monotonic()
        states = [self._known.get(job.job_id, "UNKNOWN") for job in jobs]
        done = [state not in LIVE_STATES for state in states]
        if all(done) or any(d and not job.paths.result_pickle.exists() for d, job in zip(done, jobs, strict=True)):
            self._asked_at = -float("inf")  # confirm the end on the next poll
        return done, ["ENDED" if state == GONE else state for state in states]


class JobEndedWithoutResult(SoupExpError):
    """SLURM ended a job before it could report (cancelled, killed, its node lost)."""


def slurm_return(job: Any, overrides: list[str], state: str, task_name: str) -> JobReturn:
    """The job's own result, or a failure that names its state and shows its log's end."""
    if job.paths.result_pickle.exists():
        return job.results()[0]
    last = latest_progress(job.paths.stderr)
    ended = "left no result, and SLURM lists it no more" if state == GONE else f"ended {state.lower()} without a result"
    error = JobEndedWithoutResult(f"SLURM job {job.job_id} {ended}"
                                  + (f" ({last})" if last else "") + f"; its log: {job.paths.stderr}")
    return JobReturn(overrides=overrides, status=JobStatus.FAILED, _return_value=error, task_name=task_name)


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
    """``launcher=slurm``: a SLURM job array, checked against the partition first, then
    watched from the submitting shell."""

    def before_submission(self) -> None:
        from soup_exp.cluster.preflight import check_request
        from soup_exp.stages.experiment import exit_with_error

        try:
            check_request(self.params)
        except (ConfigError, OSError) as err:
            exit_with_error(str(self.config.get("stage", "multirun")), err)

    def follow(self, jobs: Sequence[Any], labels: Sequence[str], overrides: Sequence[list[str]]) -> list[JobReturn]:
        progress = SlurmProgress()
        watch(jobs, labels, progress)
        final = progress.states.query(job.job_id for job in jobs)
        return [slurm_return(job, list(o), final.get(job.job_id, GONE), str(self.config.hydra.job.name))
                for job, o in zip(jobs, overrides, strict=True)]
