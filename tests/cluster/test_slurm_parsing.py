"""What soup-exp reads from SLURM's commands, on the outputs SLURM 22.05 prints."""

from __future__ import annotations

import pytest

from soup_exp.cluster.preflight import _problems
from soup_exp.cluster.slurm import Partition, _minutes, _parse_states


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
