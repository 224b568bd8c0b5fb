"""Run one fine-tune and send ``KILL_SIGNAL`` (default SIGKILL) right after optimiser step
``KILL_AT_STEP``: to this process, or with ``KILL_GROUP=1`` to its whole process group
(its loader workers too, as SLURM signals every process of a job step). Used by the resume
tests: a real signal at a deterministic point, through the stage's own error handling."""

import os
import signal
import sys
from pathlib import Path

import torch

torch.set_num_threads(1)
sys.path[:0] = [str(Path(__file__).parent), str(Path(__file__).parent.parent)]

from conftest import compose_finetune  # noqa: E402

import soup_exp.training.loop as loop  # noqa: E402
from soup_exp.finetune import run_finetune  # noqa: E402
from soup_exp.stages.experiment import run_stage  # noqa: E402

kill_at = int(os.environ["KILL_AT_STEP"])
kill_signal = getattr(signal, os.environ.get("KILL_SIGNAL", "SIGKILL"))
send = (lambda s: os.killpg(os.getpgid(0), s)) if os.environ.get("KILL_GROUP") else (lambda s: os.kill(os.getpid(), s))
original_fit = loop.fit


def fit_then_kill(*args, **kwargs):
    def on_step(step: int) -> None:
        if step == kill_at:
            send(kill_signal)

    return original_fit(*args, on_step=on_step, **kwargs)


loop.fit = fit_then_kill
run_stage(compose_finetune(Path(sys.argv[1]), *sys.argv[2:]), run_finetune)
