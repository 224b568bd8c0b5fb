"""What soup-exp reads from SLURM's commands, on the outputs SLURM 22.05 prints."""

from __future__ import annotations

import logging
import subprocess

import pytest

from soup_exp.cluster import slurm
from soup_exp.cluster.preflight import _problems
from soup_exp.cluster.slurm import GONE, LIVE_STATES, JobStates, Partition, _minutes, _parse_states


def test_job_states_from_sacct_and_squeue_lines() -> None:
    states = _parse_states("41_0|COMPLETED\n41_1|CANCELLED by 0\n41_[2-4,7]|PENDING\n41_5|RUNNING\n41_5.batch|RUNNING\n"
                           "42|REQUEUED\n")
    assert states == {"41_0": "COMPLETED", "41_1": "CANCELLED", "41_2": "PENDING", "41_3": "PENDING",
                      "41_4": "PENDING", "41_7": "PENDING", "41_5": "RUNNING", "42": "REQUEUED"}
    assert _parse_states("43_[0-9%2]|PENDING")["43_9"] == "PENDING"  # a throttled array


@pytest.mark.parametrize(("limit", "minutes"), [("infinite", None), ("30:00", 30), ("2:00:00", 120),
                                                ("1-00:00:00", 1440), ("45", 45), ("0:30:30", 31)])
def test_time_limits(limit: str, minutes: int | None) -> None:
    assert _minutes(limit) == minutes


def test_the_largest_node_of_a_partition_and_its_limits() -> None:
    part = Partition.parse("gpu", ["64|512000|gpu:a100:8(S:0-1)|2-00:00:00|4", "32+|256000|gpu:4|2-00:00:00|2"])
    assert (part.cpus, part.memory_mb // 1024, part.gpus, part.nodes, part.time_limit_min) == (64, 500, 8, 6, 2880)


CPU_NODE = Partition(name="debug", cpus=2, memory_mb=21694, gpus=0, nodes=1, time_limit_min=60)


@pytest.mark.parametrize(("key", "value", "fix"), [
    ("gpus_per_node", 1, "set hydra.launcher.gpus_per_node=0"),
    ("cpus_per_task", 10, "set hydra.launcher.cpus_per_task=2 or less"),
    ("mem_gb", 64, "set hydra.launcher.mem_gb=21 or less"),
    ("nodes", 2, "set hydra.launcher.nodes=1 or less"),
    ("timeout_min", 720, "set hydra.launcher.timeout_min=60 or less"),
])
def test_each_impossible_request_names_its_key_and_the_value_that_fits(key: str, value: int, fix: str) -> None:
    fits = {"gpus_per_node": 0, "cpus_per_task": 1, "mem_gb": 1, "nodes": 1, "timeout_min": 30, "tasks_per_node": 1}
    assert list(_problems(fits, CPU_NODE)) == []
    (problem,) = _problems({**fits, key: value}, CPU_NODE)
    assert problem.startswith(f"hydra.launcher.{key}={value}: ") and fix in problem


def test_cpus_count_every_task_of_a_node() -> None:
    (problem,) = _problems({"cpus_per_task": 2, "tasks_per_node": 2}, CPU_NODE)
    assert "2 task(s) per node would need 4 CPUs" in problem and "cpus_per_task=1 or less" in problem


class _Controller:
    """``_run`` as sacct and squeue answer it: their outputs (or failures), and what was asked."""

    def __init__(self, sacct: str | None, squeue: str | None, squeue_error: str = "") -> None:
        self.answers = {"sacct": sacct, "squeue": squeue}
        self.squeue_error = squeue_error
        self.asked: list[list[str]] = []

    def __call__(self, command: list[str]) -> subprocess.CompletedProcess:
        self.asked.append(command)
        out = self.answers[command[0]]
        if out is None:
            error = "sacct: error: Slurm accounting storage is disabled" if command[0] == "sacct" else self.squeue_error
            return subprocess.CompletedProcess(command, 1, "", error)
        return subprocess.CompletedProcess(command, 0, out, "")

    def asked_squeue(self) -> list[str]:
        return [c[-1] for c in self.asked if c[0] == "squeue"]


def _states(monkeypatch, controller: _Controller, *job_ids: str) -> dict[str, str]:
    monkeypatch.setattr(slurm, "_run", controller)
    return JobStates().query(job_ids)


def test_a_job_preempted_and_not_requeued_is_final_not_waited_for(monkeypatch) -> None:
    # PreemptMode=CANCEL: sacct's last word is PREEMPTED and squeue has forgotten the job
    controller = _Controller(sacct="51_0|PREEMPTED\n51_1|RUNNING\n", squeue="51_1|RUNNING\n")
    states = _states(monkeypatch, controller, "51_0", "51_1")
    assert states == {"51_0": "PREEMPTED", "51_1": "RUNNING"}
    assert states["51_0"] not in LIVE_STATES and controller.asked_squeue() == ["51"]


def test_a_preempted_job_that_slurm_requeued_is_live(monkeypatch) -> None:
    states = _states(monkeypatch, _Controller(sacct="52|PREEMPTED\n", squeue="52|PENDING\n"), "52")
    assert states == {"52": "PENDING"} and states["52"] in LIVE_STATES


def test_a_job_sacct_does_not_list_yet_is_what_squeue_says(monkeypatch) -> None:
    controller = _Controller(sacct="53_1|COMPLETED\n", squeue="53_0|PENDING\n")
    assert _states(monkeypatch, controller, "53_0", "53_1") == {"53_0": "PENDING", "53_1": "COMPLETED"}


@pytest.mark.parametrize("sacct", ["", "54|UNKNOWN\n"])
def test_a_job_neither_command_knows_is_gone(monkeypatch, sacct: str) -> None:
    # squeue -j with one id it does not know exits 1 (SLURM 22.05)
    controller = _Controller(sacct=sacct, squeue=None, squeue_error="slurm_load_jobs error: Invalid job id specified")
    states = _states(monkeypatch, controller, "54")
    assert states == {"54": GONE} and GONE not in LIVE_STATES


def test_squeue_decides_only_for_the_jobs_sacct_is_unsure_of(monkeypatch) -> None:
    controller = _Controller(sacct="55|COMPLETED\n56|CANCELLED by 0\n", squeue="")
    assert _states(monkeypatch, controller, "55", "56") == {"55": "COMPLETED", "56": "CANCELLED"}
    assert controller.asked_squeue() == []


def test_a_controller_that_does_not_answer_is_asked_again_not_taken_for_an_end(monkeypatch, caplog) -> None:
    controller = _Controller(sacct=None, squeue=None, squeue_error="slurm_load_jobs error: Unable to contact slurm controller")
    monkeypatch.setattr(slurm, "_run", controller)
    states = JobStates()
    with caplog.at_level(logging.WARNING, logger="soup_exp.cluster.slurm"):
        for _ in range(3):
            assert states.query(["57_0", "58"]) == {"57_0": "UNKNOWN", "58": "UNKNOWN"}
    assert [c[0] for c in controller.asked] == ["sacct", "squeue", "squeue", "squeue"]  # sacct once
    assert controller.asked_squeue()[0] == "57,58"
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2 and "accounting storage is disabled" in messages[0]
    assert "Unable to contact slurm controller" in messages[1]


def test_without_accounting_squeue_alone_decides(monkeypatch) -> None:
    controller = _Controller(sacct=None, squeue="59_0|PREEMPTED\n59_1|REQUEUED\n")
    states = _states(monkeypatch, controller, "59_0", "59_1", "59_2")
    assert states == {"59_0": "PREEMPTED", "59_1": "REQUEUED", "59_2": GONE}
    assert [s in LIVE_STATES for s in states.values()] == [False, True, False]


def test_a_missing_or_hung_command_is_a_failed_answer(monkeypatch) -> None:
    missing = slurm._run(["/nonexistent/squeue"])
    assert missing.returncode != 0 and missing.stderr.startswith("/nonexistent/squeue: ")

    def hung(command, **kwargs):
        raise subprocess.TimeoutExpired(command, 60)

    monkeypatch.setattr(slurm.subprocess, "run", hung)
    assert "timed out after 60 seconds" in slurm._run(["squeue"]).stderr
