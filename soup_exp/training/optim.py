"""AdamW with the reference code's cosine schedule and linear warmup."""

from __future__ import annotations

import math

import torch

WARMUP_SHARE_CAP = 0.2  # short runs (smoke tests, the demo) warm up for at most 20% of steps


def effective_warmup(warmup_steps: int, total_steps: int) -> int:
    return min(warmup_steps, int(total_steps * WARMUP_SHARE_CAP))


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
