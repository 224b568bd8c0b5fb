"""AdamW with the reference code's cosine schedule and linear warmup."""

from __future__ import annotations

import math

import torch

WARMUP_SHARE_CAP = 0.2  # short runs (smoke tests, the demo) warm up for at most 20% of steps


def effective_warmup(warmup_steps: int, total_steps: int) -> int:
    return min(warmup_steps, int(total_steps * WARMUP_SHARE_CAP))


def describe_warmup(warmup_steps: int, total_steps: int) -> str:
    """The warmup a run uses, and why when it is not ``train.warmup_steps``: a cap the user
    did not ask for is said, not hidden."""
    used = effective_warmup(warmup_steps, total_steps)
    if used == warmup_steps:
        return f"warmup {used}"
    return (f"warmup {used} (train.warmup_steps={warmup_steps}, capped at {WARMUP_SHARE_CAP:.0%} "
            f"of {total_steps} steps)")


def planned_warmup(warmup_steps: int) -> str:
    """``train.warmup_steps`` with the cap, for a plan that does not know the run's length."""
    return f"{warmup_steps} (at most {WARMUP_SHARE_CAP:.0%} of the run's steps)"


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
