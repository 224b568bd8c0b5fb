"""AdamW with the reference code's cosine schedule and linear warmup."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from soup_exp.errors import ConfigError
from soup_exp.training.settings import TrainSettings

WARMUP_SHARE_CAP = 0.2  # short runs (smoke tests, the demo) warm up for at most 20% of steps


def effective_warmup(warmup_steps: int, total_steps: int) -> int:
    return min(warmup_steps, int(total_steps * WARMUP_SHARE_CAP))


def describe_warmup(warmup_steps: int, total_steps: int, key: str = "train.warmup_steps") -> str:
    """The warmup a run uses, and why when it is not ``key`` (the setting that asked for it):
    a cap the user did not ask for is said, not hidden."""
    used = effective_warmup(warmup_steps, total_steps)
    if used == warmup_steps:
        return f"warmup {used}"
    return f"warmup {used} ({key}={warmup_steps}, capped at {WARMUP_SHARE_CAP:.0%} of {total_steps} steps)"


def linear_probe_steps(images: int, epochs: int, batch_size: int) -> int:
    """The optimiser steps of a linear probe over ``images`` features."""
    return max(1, epochs * math.ceil(images / batch_size))


def planned_warmup(settings: TrainSettings, total_steps: int | None) -> str:
    """The warmup a plan announces: the one the run will use when its length is known
    (:meth:`Schedule.plan` on the training set's size), else the rule that will fix it."""
    if total_steps is not None:
        return describe_warmup(settings.warmup_steps, total_steps)
    at_most = f", at most train.max_steps={settings.max_steps}" if settings.max_steps is not None else ""
    return (f"warmup min({settings.warmup_steps}, {WARMUP_SHARE_CAP:.0%} of the steps) with steps = "
            f"{settings.epochs} epochs x (training images // {settings.batch_size}){at_most}: "
            "the training set cannot be listed yet to count them")


@dataclass(frozen=True)
class Schedule:
    """How many samples each rank takes per micro-step, and how many steps the run has."""

    micro_batch: int
    steps_per_epoch: int
    total_steps: int
    warmup: int

    @classmethod
    def plan(cls, settings: TrainSettings, num_samples: int, world_size: int) -> Schedule:
        per_step = settings.batch_size // settings.grad_accum
        if settings.batch_size % (world_size * settings.grad_accum):
            raise ConfigError(
                f"train.batch_size={settings.batch_size} must be divisible by world size x "
                f"train.grad_accum = {world_size} x {settings.grad_accum}"
            )
        micro = per_step // world_size
        steps_per_epoch = (num_samples // world_size) // micro // settings.grad_accum
        if steps_per_epoch == 0:
            raise ConfigError(
                f"the training set has {num_samples} images, fewer than one global batch "
                f"(train.batch_size={settings.batch_size}); lower train.batch_size"
            )
        total = settings.epochs * steps_per_epoch
        if settings.max_steps is not None:
            total = min(total, settings.max_steps)
        return cls(micro, steps_per_epoch, total, effective_warmup(settings.warmup_steps, total))


def build_optimizer(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW over all trainable parameters with one weight decay, as in the paper's code."""
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def cosine_with_warmup(optimizer: torch.optim.Optimizer, warmup: int, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """lr * (s + 1) / warmup during warmup, then half a cosine from lr to 0 over the rest."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        span = max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(step - warmup, span) / span))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
