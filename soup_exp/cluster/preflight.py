"""Refuse a SLURM request the partition can never meet, before anything is submitted.

sbatch rejects some impossible requests (GPUs on a node without them, more memory than a
node has) with a message that names no setting, and accepts others that then pend
forever (``Reason=PartitionConfig``). Each check names the ``hydra.launcher`` key to change.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from soup_exp.cluster.slurm import Partition, partitions
from soup_exp.errors import ConfigError


def check_request(params: Mapping[str, Any]) -> Partition:
    """``params``: the launcher's settings (``partition``, ``gpus_per_node``, ``cpus_per_task``, ...)."""
    rows, default = partitions()
    name = params.get("partition") or default
    if name is None:
        raise ConfigError("hydra.launcher.partition is not set and this cluster has no default partition; "
                          f"choose one of: {', '.join(sorted(rows))}")
    if name not in rows:
        raise ConfigError(f"hydra.launcher.partition={name}: no such partition here; "
                          f"choose one of: {', '.join(sorted(rows))}")
    part = Partition.parse(name, rows[name])
    for problem in _problems(params, part):
        raise ConfigError(problem)
    return part


def _problems(params: Mapping[str, Any], part: Partition):
    gpus = int(params.get("gpus_per_node") or 0)
    tasks = int(params.get("tasks_per_node") or 1)
    cpus = int(params.get("cpus_per_task") or 1)
    mem_gb = params.get("mem_gb")
    nodes = int(params.get("nodes") or 1)
    timeout = params.get("timeout_min")
    where = f"partition '{part.name}'"
    if gpus > part.gpus:
        fix = "set hydra.launcher.gpus_per_node=0 to run on CPUs" if part.gpus == 0 else \
            f"set hydra.launcher.gpus_per_node={part.gpus} or less"
        has = "has no GPUs" if part.gpus == 0 else f"has at most {part.gpus} GPUs per node"
        yield f"hydra.launcher.gpus_per_node={gpus}: {where} {has}; {fix}, or choose another hydra.launcher.partition"
    if cpus * tasks > part.cpus:
        yield (f"hydra.launcher.cpus_per_task={cpus}: {tasks} task(s) per node would need {cpus * tasks} CPUs, "
               f"and the nodes of {where} have {part.cpus}; set hydra.launcher.cpus_per_task={max(1, part.cpus // tasks)} "
               "or less (a request no node can meet pends forever)")
    if mem_gb is not None and int(mem_gb) * 1024 > part.memory_mb:
        yield (f"hydra.launcher.mem_gb={mem_gb}: the nodes of {where} have {part.memory_mb // 1024} GB for jobs; "
               f"set hydra.launcher.mem_gb={max(1, part.memory_mb // 1024)} or less")
    if nodes > part.nodes:
        yield f"hydra.launcher.nodes={nodes}: {where} has {part.nodes} node(s); set hydra.launcher.nodes={part.nodes} or less"
    if timeout is not None and part.time_limit_min is not None and int(timeout) > part.time_limit_min:
        yield (f"hydra.launcher.timeout_min={timeout}: {where} allows {part.time_limit_min} min per job; set "
               f"hydra.launcher.timeout_min={part.time_limit_min} or less (a job that reaches it is requeued and resumes)")
