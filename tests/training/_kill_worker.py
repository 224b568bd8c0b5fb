"""Run one fine-tune and SIGKILL this process right after optimiser step ``KILL_AT_STEP``
(used by the resume test: a real hard kill, at a deterministic point)."""

import os
import signal
import sys
from pathlib import Path

import torch

torch.set_num_threads(1)
sys.path.insert(0, str(Path(__file__).parent))

from conftest import compose_finetune  # noqa: E402

import soup_exp.training.loop as loop  # noqa: E402
from soup_exp.finetune import run_finetune  # noqa: E402

kill_at = int(os.environ["KILL_AT_STEP"])
original_fit = loop.fit


def fit_then_kill(*args, **kwargs):
    def on_step(step: int) -> None:
        if step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    return original_fit(*args, on_step=on_step, **kwargs)


loop.fit = fit_then_kill
run_finetune(compose_finetune(Path(sys.argv[1]), *sys.argv[2:]))
