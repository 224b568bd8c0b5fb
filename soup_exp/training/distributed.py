"""torch.distributed set-up for torchrun (env://) and submitit tasks on SLURM.

``train.batch_size`` is the global batch; each rank trains on ``batch / (world * accum)``
images per micro-step. Only rank 0 writes files. CPU runs use gloo, GPU runs NCCL.
"""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist

from soup_exp.utils.runtime import resolve_device

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    launcher: str = "single"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def broadcast_object(self, obj):
        """Rank 0's value on every rank (decisions such as 'stop now' must agree)."""
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def all_gather_object(self, obj) -> list:
        if not self.distributed:
            return [obj]
        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out


def _from_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def _from_submitit() -> bool:
    """Inside a submitit job with several tasks: export MASTER_ADDR/RANK/... for env://."""
    if "SUBMITIT_EXECUTOR" not in os.environ:
        return False
    import submitit

    env = submitit.JobEnvironment()
    if env.num_tasks <= 1:
        return False
    submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    return True


LAUNCH_ENVS: dict[str, Callable[[], bool]] = {"torchrun": _from_torchrun, "submitit": _from_submitit}


def setup_distributed(device: str = "auto") -> DistContext:
    """Join the process group if a launcher started several processes, else run single."""
    launcher = next((name for name, detect in LAUNCH_ENVS.items() if detect()), None)
    base = resolve_device(device)
    if launcher is None or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return DistContext(device=base)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if base.type == "cuda":
        base = torch.device("cuda", local_rank)
        torch.cuda.set_device(base)
    if not dist.is_initialized():
        backend = "nccl" if base.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, init_method="env://",
                                timeout=datetime.timedelta(minutes=60))
    log.info("rank %d/%d on %s (%s)", rank, world, base, launcher)
    return DistContext(rank=rank, world_size=world, local_rank=local_rank, device=base, launcher=launcher)


def teardown_distributed(ctx: DistContext) -> None:
    if ctx.distributed and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
