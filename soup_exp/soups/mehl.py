"""MEHL-Soup: a learned soup by block coordinate descent, a few ingredients at a time.

Li, Jiang, Liu, Huang, Kwok, "Learning Scalable Model Soup on a Single GPU: An Efficient
Subspace Training Strategy" (Memory Efficient Hyperplane Learned Soup, ECCV 2024,
arXiv 2407.03641; reference code ``nblt/MEHL-Soup``, ``MEHL_soup_layer.py``). What is
learned, as in the reference code:

- the soup lives on the *hyperplane* (affine hull) of the ingredients, not the simplex:
  ``soup = c + sum_i x_i (theta_i - c) / |theta_i - c|`` over the ingredients of one block,
  with ``c`` the current soup (for the first block, the mean of its members), ``x`` starting
  at 0 and unconstrained, so a coefficient may go below zero (extrapolation) and there is
  no softmax and no temperature (no ``beta`` is learned or recorded). The norm is taken
  per parameter tensor in ``by_layer`` mode (MEHL-Soup+, the reference's ``layer_size 0``
  and the reported 81.62 %) and over the whole model in ``per_model`` mode (MEHL-Soup);
- the ingredients are shuffled (``seed``) and cut into blocks of ``block_size``; each block's
  ``x`` is trained for ``epochs`` over the held-out batches with AdamW (cosine schedule,
  ``warmup`` of its steps), the model's gradient clipped to norm ``grad_clip`` and projected
  on the block's directions; then the soup becomes the next block's ``c``. ``model_epochs``
  repeats the whole sweep (the reference's ``models_epochs``).

Memory is the block's directions (``block_size`` models in fp32) plus the soup, its
gradient and one skeleton: set by ``block_size``, not by the number of ingredients. Each
ingredient is read once per sweep (and the first block once more, for its mean).

Recorded: ``coefficients``, each ingredient's weight in the soup (``soup = sum_j a_j
theta_j``; per tensor in ``by_layer`` mode; they sum to one and may be negative), and the
loss ``curve``. With a ``state_file`` (:mod:`.learned_state`) the soup resumes where it
stopped: the soup so far, the block's ``x``, AdamW's moments and the curve are saved after
every epoch and when a signal stops it; each epoch's batches depend only on the epoch, so
a resumed soup ends with the coefficients of an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import torch
from torch import nn
from torch.func import functional_call
from tqdm.auto import tqdm

from soup_exp.cluster.signals import StopOnSignal
from soup_exp.soups.context import SoupContext
from soup_exp.soups.freshness import pool_identity
from soup_exp.soups.ingredients import WeightsLike
from soup_exp.soups.learned import (
    STATE_FILE,
    Batches,
    Mode,
    log_learned,
    prepare_learning,
    step_logger,
)
from soup_exp.soups.learned_state import Progress, load_state, save_state
from soup_exp.soups.recipe import Range, Soup
from soup_exp.soups.streaming import finalize

log = logging.getLogger(__name__)


@dataclass
class MehlResult:
    state_dict: dict[str, torch.Tensor]
    coefficients: list[float] | dict[str, list[float]]  # per model, or per parameter tensor
    curve: list[dict[str, float]]  # one entry per step: epoch, block, step, loss
    blocks: list[list[str]]  # the ingredients of each block, in the order trained
    names: list[str] = field(default_factory=list)


def block_schedule(n: int, block_size: int, model_epochs: int, seed: int) -> list[list[int]]:
    """The blocks in training order: each sweep a seeded shuffle of the ingredients, cut
    into blocks of ``block_size`` (the last may be smaller)."""
    blocks = []
    for sweep in range(model_epochs):
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1000 + sweep)).tolist()
        blocks += [order[i:i + block_size] for i in range(0, n, block_size)]
    return blocks


def cosine_lr(base: float, step: int, steps: int, warmup: float) -> float:
    """The reference's schedule: linear warmup over ``warmup`` of the steps, then cosine to 0."""
    warm = int(steps * warmup)
    if step < warm:
        return base * (step + 1) / warm
    return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(steps - warm, 1))) * base


def mehl_soup(
    ingredients: WeightsLike | Iterable[WeightsLike],
    skeleton: nn.Module,
    batches: Batches,
    *,
    mode: Mode = "by_layer",
    block_size: int = 18,
    epochs: int = 5,
    model_epochs: int = 1,
    lr: float = 0.01,
    weight_decay: float = 0.0,
    warmup: float = 0.2,
    grad_clip: float | None = 1.0,
    seed: int = 1,
    device: str | torch.device | None = None,
    on_step: Callable[[dict[str, float]], None] | None = None,
    progress: bool = False,
    state_file: str | Path | None = None,
    inputs: Mapping[str, Any] | None = None,
) -> MehlResult:
    """Learn a MEHL soup on held-out ``batches`` (as :func:`~soup_exp.soups.learned.learned_soup`
    takes them: ``epoch -> batches``, the same for the same epoch, or a re-iterable)."""
    ings, device, keys, constants, skeleton = prepare_learning(ingredients, skeleton, mode, device, "MEHL soup")
    names = [ing.name for ing in ings]
    n = len(ings)
    row_of = {k: (i if mode == "by_layer" else 0) for i, k in enumerate(keys)}
    rows = len(keys) if mode == "by_layer" else 1
    blocks = block_schedule(n, block_size, model_epochs, seed)
    width = min(block_size, n)

    center = {k: torch.zeros(ings[0].spec(k)[1], dtype=torch.float32, device=device) for k in keys}
    weights = torch.zeros(rows, n, dtype=torch.float64)  # each ingredient's coefficient in ``center``
    x = torch.zeros(width, rows, device=device, requires_grad=True)

    def new_optimizer() -> torch.optim.Optimizer:
        return torch.optim.AdamW([x], lr=lr, weight_decay=weight_decay)

    optimizer = new_optimizer()
    trained = {"x": x, "coefficients": weights, **{f"center.{k}": v for k, v in center.items()}}
    state_path = Path(state_file) if state_file is not None else None
    bound = {"pool": pool_identity(ings), "params": {
        "mode": mode, "block_size": block_size, "epochs": epochs, "model_epochs": model_epochs, "lr": lr,
        "weight_decay": weight_decay, "warmup": warmup, "grad_clip": grad_clip, "seed": seed}, **(inputs or {})}
    at, resumed = Progress(), None
    if state_path is not None:
        resumed = load_state(state_path, bound, trained, optimizer)
        if resumed is not None:
            at = resumed
            log.info("resuming MEHL soup from %s: block %d of %d, epoch %d of %d (step %d)", state_path,
                     min(at.epoch // epochs + 1, len(blocks)), len(blocks), at.epoch % epochs + 1, epochs, at.step)
    if resumed is None:
        _start_at_mean(ings, blocks[0], keys, center, weights)

    def save() -> None:
        if state_path is not None:
            save_state(state_path, bound, at, trained, optimizer)

    def stop_if_signalled(saved: bool) -> None:
        if stop is not None and stop.signum:
            if not saved:
                save()
            stop.leave(stop.signum, at.step, str(state_path), where=f"step {at.step}, block "
                       f"{min(at.epoch // epochs + 1, len(blocks))} of {len(blocks)}")

    total = len(blocks) * epochs
    if at.epoch >= 1:
        per_epoch = sum(1 for p in at.curve if p["epoch"] == 0)
    else:
        per_epoch = sum(1 for _ in (batches(0) if callable(batches) else batches))
    directions: dict[str, torch.Tensor] = {}
    scales = torch.zeros(width, rows, dtype=torch.float64)
    loaded_block = None
    with StopOnSignal() if state_path is not None else contextlib.nullcontext() as stop:
        while at.epoch < total:
            block_index, inner = divmod(at.epoch, epochs)
            block = blocks[block_index]
            if loaded_block != block_index:
                directions.clear()  # the last block's directions go before this block's are read
                directions, scales = _directions(ings, block, keys, row_of, rows, center, width)
                loaded_block = block_index
            epoch_batches = batches(at.epoch) if callable(batches) else batches
            for images, targets in tqdm(itertools.islice(epoch_batches, at.batch, None), initial=at.batch,
                                        desc=f"MEHL soup block {block_index + 1}/{len(blocks)} "
                                             f"epoch {inner + 1}/{epochs}", disable=not progress, leave=False):
                images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
                for group in optimizer.param_groups:
                    group["lr"] = cosine_lr(lr, inner * per_epoch + at.batch, per_epoch * epochs, warmup)
                loss = _step(skeleton, images, targets, x, directions, center, constants, row_of, grad_clip)
                optimizer.step()
                point = {"epoch": at.epoch, "block": block_index, "step": at.step, "loss": loss}
                at.curve.append(point)
                at.step += 1
                at.batch += 1
                if on_step is not None:
                    on_step(point)
                stop_if_signalled(saved=False)
            at.epoch, at.batch = at.epoch + 1, 0
            if at.epoch % epochs == 0:  # the block is trained: its soup is the next block's centre
                _absorb(block, x, directions, scales, center, weights, row_of)
                x.data.zero_()
                optimizer = new_optimizer()
            save()
            stop_if_signalled(saved=True)

    soup = finalize({**{k: v.detach().cpu() for k, v in center.items()},
                     **{k: v.cpu() for k, v in constants.items()}}, 1.0, ings[0])
    state_dict = {k: soup[k] for k in ings[0].tensor_keys()}
    coefficients: Any = (weights[0].tolist() if mode == "per_model"
                         else {k: weights[row_of[k]].tolist() for k in keys})
    return MehlResult(state_dict, coefficients, at.curve, [[names[i] for i in b] for b in blocks], names)


def _start_at_mean(ings, block: Sequence[int], keys: Sequence[str], center: dict[str, torch.Tensor],
                   weights: torch.Tensor) -> None:
    """The first block's centre: the mean of its members."""
    for key in keys:
        center[key].zero_()
    for i in block:
        for key, tensor in ings[i].tensors(keys):
            center[key].add_(tensor.to(center[key].device, torch.float32))
        weights[:, i] = 1.0 / len(block)
    for key in keys:
        center[key].div_(len(block))


def _directions(ings, block: Sequence[int], keys: Sequence[str], row_of: Mapping[str, int], rows: int,
                center: Mapping[str, torch.Tensor], width: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """``(theta_i - c) / |theta_i - c|`` of the block's members, one ``(width, *shape)`` tensor
    per key (rows past the block are zero), and each member's ``1 / norm`` per row (0 for a
    member at the centre, whose direction stays zero)."""
    directions = {k: torch.zeros((width, *center[k].shape), dtype=torch.float32, device=center[k].device)
                  for k in keys}
    squares = torch.zeros(width, rows, dtype=torch.float64)
    for slot, i in enumerate(block):
        for key, tensor in ings[i].tensors(keys):
            diff = directions[key][slot]
            diff.copy_(tensor)
            diff.sub_(center[key])
            squares[slot, row_of[key]] += float(diff.double().pow(2).sum())
    norms = squares.sqrt()
    scales = torch.where(norms > 0, 1.0 / norms, torch.zeros_like(norms))
    for key in keys:
        scale = scales[:, row_of[key]].to(torch.float32).to(directions[key].device)
        directions[key].mul_(scale.view(-1, *([1] * center[key].dim())))
    return directions, scales


def _mixed(x: torch.Tensor, directions: Mapping[str, torch.Tensor], center: Mapping[str, torch.Tensor],
           row_of: Mapping[str, int]) -> dict[str, torch.Tensor]:
    return {k: center[k] + torch.tensordot(x[:, row_of[k]], directions[k], dims=1) for k in center}


def _step(skeleton: nn.Module, images: torch.Tensor, targets: torch.Tensor, x: torch.Tensor,
          directions: Mapping[str, torch.Tensor], center: Mapping[str, torch.Tensor],
          constants: Mapping[str, torch.Tensor], row_of: Mapping[str, int], grad_clip: float | None) -> float:
    """One reference ``P_Step``: the soup's gradient, clipped, projected on the directions into ``x.grad``."""
    with torch.no_grad():
        params = {k: v.requires_grad_(True) for k, v in _mixed(x, directions, center, row_of).items()}
    loss = nn.functional.cross_entropy(functional_call(skeleton, {**params, **constants}, (images,)), targets)
    grads = torch.autograd.grad(loss, list(params.values()))
    scale = 1.0
    if grad_clip:
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        scale = float(torch.clamp(grad_clip / (norm + 1e-6), max=1.0))
    grad = torch.zeros_like(x)
    for key, g in zip(params, grads, strict=True):
        grad[:, row_of[key]] += directions[key].flatten(1) @ g.flatten()
    x.grad = grad.mul_(scale)
    return float(loss.detach())


def _absorb(block: Sequence[int], x: torch.Tensor, directions: Mapping[str, torch.Tensor], scales: torch.Tensor,
            center: dict[str, torch.Tensor], weights: torch.Tensor, row_of: Mapping[str, int]) -> None:
    """Move the centre to the trained soup, and the coefficients with it:
    ``a <- (1 - sum_i s_i) a + sum_i s_i e_i`` with ``s_i = x_i / |theta_i - c|``."""
    with torch.no_grad():
        for key, value in _mixed(x, directions, center, row_of).items():
            center[key].copy_(value)
        steps = x.detach().double().cpu()[:len(block)] * scales[:len(block)]
        weights.mul_(1 - steps.sum(0).unsqueeze(1))
        for slot, i in enumerate(block):
            weights[:, i] += steps[slot]


def mehl_recipe(
    ctx: SoupContext,
    *,
    mode: Mode,
    block_size: Annotated[int, Range(1)],
    epochs: Annotated[int, Range(1)],
    model_epochs: Annotated[int, Range(1)],
    lr: Annotated[float, Range(0.0, low_open=True)],
    weight_decay: Annotated[float, Range(0.0)],
    batch_size: Annotated[int, Range(1)],
    warmup: Annotated[float, Range(0.0, 1.0)],
    grad_clip: Annotated[float, Range(0.0)] | None,
    seed: int,
) -> Soup:
    """Recipe ``mehl_soup``: MEHL-Soup(+) on held-out, resumable after every epoch and at the
    batch a signal stops it."""
    device = ctx.judge.device  # builds the held-out evaluator: its data and numerics are inputs too
    result = mehl_soup(ctx.pool.ingredients, ctx.judge.skeleton,
                       lambda epoch: ctx.judge.heldout_batches(batch_size, epoch),
                       mode=mode, block_size=block_size, epochs=epochs, model_epochs=model_epochs, lr=lr,
                       weight_decay=weight_decay, warmup=warmup, grad_clip=grad_clip, seed=seed, device=device,
                       on_step=step_logger(ctx), progress=ctx.progress, state_file=ctx.store.state_file(STATE_FILE),
                       inputs={**ctx.store.inputs(), "seed": ctx.judge.seed})
    log_learned(ctx, result.names, result.coefficients, result.curve)
    return Soup(result.state_dict, {"blocks": result.blocks}, coefficients=result.coefficients,
                curve=result.curve, held_out_accuracy=ctx.judge.evaluate(result.state_dict))
