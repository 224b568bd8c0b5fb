"""The SLURM launcher's end of a job, from the controller's answers (a fake ``_run``, no SLURM):
a job SLURM forgot or preempted for good is reported failed with its log; a requeued one
is still waited for."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf

# classes are looked up on the module when used: Hydra's plugin scan re-executes plugin modules,
# so a class imported by name here could be an older copy than the one the launcher raises
from hydra_plugins.soup_exp_launchers import watched
from hydra_plugins.soup_exp_launchers.watched import SlurmProgress, WatchedSlurmLauncher
from soup_exp.cluster import slurm


def _job(tmp_path: Path, job_id: str, *, result: bool = False, log_line: str = "") -> SimpleNamespace:
    folder = tmp_path / job_id
    folder.mkdir()
    stderr = folder / f"{job_id}_0_log.err"
    stderr.write_text(f"{log_line}\n" if log_line else "")
    result_file = folder / f"{job_id}_0_result.pkl"
    finished = JobReturn(overrides=["sweep.index=1"], status=JobStatus.COMPLETED, _return_value="ingredient")
    if result:
        result_file.write_bytes(b"")  # submitit's result file; the launcher looks at its existence
    return SimpleNamespace(job_id=job_id, paths=SimpleNamespace(result_pickle=result_file, stderr=stderr),
                           results=lambda: [finished])


def _controller(monkeypatch, answers: list[dict[str, tuple[int, str, str]]]) -> list[list[str]]:
    """Each query of the controller takes the next answer (sacct and squeue), the last one repeats."""
    asked: list[list[str]] = []

    def run(command: list[str]) -> subprocess.CompletedProcess:
        asked.append(command)
        rounds = sum(1 for c in asked if c[0] == "sacct")
        code, out, err = answers[min(rounds, len(answers)) - 1][command[0]]
        return subprocess.CompletedProcess(command, code, out, err)

    monkeypatch.setattr(slurm, "_run", run)
    return asked


def _follow(monkeypatch, jobs: list[SimpleNamespace]) -> list[JobReturn]:
    """The launcher's wait, which must end at the first answer: every job is over."""
    def wait(seconds: float) -> None:
        raise AssertionError("the launcher waits on a job SLURM has let go")

    monkeypatch.setattr(watched, "time", SimpleNamespace(monotonic=time.monotonic, sleep=wait))
    launcher = SimpleNamespace(config=OmegaConf.create({"hydra": {"job": {"name": "finetune"}}}))
    labels = [f"#{i} sweep.index={i}" for i in range(len(jobs))]
    return WatchedSlurmLauncher.follow(launcher, jobs, labels, [[f"sweep.index={i}"] for i in range(len(jobs))])


def test_jobs_slurm_lets_go_without_a_result_fail_with_their_log_and_the_others_keep_theirs(
        monkeypatch, tmp_path: Path) -> None:
    jobs = [_job(tmp_path, "71_0", log_line="ft_000:  40%|####      | 80/200"),
            _job(tmp_path, "71_1", result=True),
            _job(tmp_path, "71_2")]
    _controller(monkeypatch, [{"sacct": (0, "71_0|PREEMPTED\n71_1|COMPLETED\n", ""), "squeue": (0, "", "")}])
    preempted, finished, forgotten = _follow(monkeypatch, jobs)

    assert finished.status == JobStatus.COMPLETED and finished.return_value == "ingredient"
    for failed in (preempted, forgotten):
        assert failed.status == JobStatus.FAILED and isinstance(failed._return_value, watched.JobEndedWithoutResult)
    assert str(preempted._return_value) == (f"SLURM job 71_0 ended preempted without a result "
                                           f"(ft_000:  40%|####      | 80/200); its log: {jobs[0].paths.stderr}")
    assert str(forgotten._return_value) == (f"SLURM job 71_2 left no result, and SLURM lists it no more; "
                                           f"its log: {jobs[2].paths.stderr}")


def test_a_preempted_job_that_slurm_requeued_is_followed_to_its_end(monkeypatch, tmp_path: Path) -> None:
    job = _job(tmp_path, "72")
    asked = _controller(monkeypatch, [
        {"sacct": (0, "72|PREEMPTED\n", ""), "squeue": (0, "72|PENDING\n", "")},
        {"sacct": (0, "72|RUNNING\n", ""), "squeue": (0, "", "")},
        {"sacct": (0, "72|COMPLETED\n", ""), "squeue": (0, "", "")},
    ])
    progress = SlurmProgress(every_s=0)
    assert progress([job]) == ([False], ["PENDING"])
    assert progress([job]) == ([False], ["RUNNING"])
    job.paths.result_pickle.write_bytes(b"")
    assert progress([job]) == ([True], ["COMPLETED"])
    assert [c[0] for c in asked] == ["sacct", "squeue", "sacct", "sacct"]


def test_a_job_neither_sacct_nor_squeue_knows_is_done_and_shown_as_ended(monkeypatch, tmp_path: Path) -> None:
    job = _job(tmp_path, "73")
    _controller(monkeypatch, [{"sacct": (0, "", ""),
                               "squeue": (1, "", "slurm_load_jobs error: Invalid job id specified")}])
    assert SlurmProgress(every_s=0)([job]) == ([True], ["ENDED"])
