"""The end-to-end training loop: steps, accumulation, DDP, checkpoints, held-out checks.

``Trainer`` owns one optimisation step (it is also what ``scripts/bench_train.py`` times
with in-memory tensors); ``fit`` feeds it the real data pipeline and handles resume,
checkpoints, periodic evaluation, logging and the non-finite-loss stop.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from soup_exp.cluster.signals import StopOnSignal, quiet_loader_worker
from soup_exp.errors import ConfigError, SoupExpError
from soup_exp.training.augment import build_loss, build_mixup
from soup_exp.training.checkpoint import (
    TrainState,
    capture_rng,
    checkpoint_path,
    load_checkpoint,
    restore_rng,
    save_checkpoint,
)
from soup_exp.training.data import SeededDistributedSampler, seeded_rngs
from soup_exp.training.distributed import DistContext
from soup_exp.training.optim import Schedule, build_optimizer, cosine_with_warmup, describe_warmup
from soup_exp.training.settings import TrainSettings
from soup_exp.utils import runtime
from soup_exp.utils.text import plural

log = logging.getLogger(__name__)


class NonFiniteLossError(SoupExpError):
    """Training diverged; the message names the step and the last good checkpoint."""


def step_seed(seed: int, *parts: int) -> int:
    return int(np.random.SeedSequence([seed, *parts]).generate_state(1)[0])


def _autocast(device: torch.device, precision: str):
    if device.type == "cuda" and precision == "fp16":
        return torch.autocast("cuda", dtype=torch.float16)
    return runtime.autocast(device, precision)


class Trainer:
    """One optimiser step over ``grad_accum`` micro-batches, DDP-aware."""

    def __init__(self, model: torch.nn.Module, settings: TrainSettings, schedule: Schedule, *,
                 ctx: DistContext, num_classes: int, precision: str = "bf16", seed: int = 0):
        self.settings, self.schedule, self.ctx = settings, schedule, ctx
        self.precision, self.seed = precision, seed
        self.model = model.to(ctx.device)
        self.optimizer = build_optimizer(self.model, settings.lr, settings.weight_decay)
        self.scheduler = cosine_with_warmup(self.optimizer, schedule.warmup, schedule.total_steps)
        self.scaler = torch.amp.GradScaler(ctx.device.type,
                                           enabled=ctx.device.type == "cuda" and precision == "fp16")
        self.mixup = build_mixup(settings, num_classes)
        if self.mixup is not None and schedule.micro_batch % 2:
            raise ConfigError(
                f"mixup/cutmix needs an even per-rank micro-batch; got {schedule.micro_batch} "
                "(train.batch_size / (world size x train.grad_accum))"
            )
        self.loss_fn = build_loss(settings, mixing=self.mixup is not None)
        wrapped: torch.nn.Module = self.model
        if ctx.distributed:
            ids = [ctx.device.index] if ctx.device.type == "cuda" else None
            wrapped = DistributedDataParallel(self.model, device_ids=ids)
        self.wrapped = torch.compile(wrapped) if settings.compile else wrapped
        self._ddp = wrapped if ctx.distributed else None

    def _no_sync(self, last: bool):
        return self._ddp.no_sync() if self._ddp is not None and not last else contextlib.nullcontext()

    def train_step(self, micro_batches: Sequence[tuple[torch.Tensor, torch.Tensor]], step: int) -> torch.Tensor:
        """Forward/backward each micro-batch, then clip and step. Returns the mean loss
        (a tensor, not synced), or raises on a non-finite loss before touching the weights."""
        self.wrapped.train()
        total = torch.zeros((), device=self.ctx.device)
        accum = len(micro_batches)
        for i, (images, targets) in enumerate(micro_batches):
            images = images.to(self.ctx.device, non_blocking=True)
            targets = targets.to(self.ctx.device, non_blocking=True)
            if self.mixup is not None:
                with seeded_rngs(step_seed(self.seed, self.ctx.rank, step, i)):
                    images, targets = self.mixup(images, targets)
            with self._no_sync(last=i == accum - 1), _autocast(self.ctx.device, self.precision):
                loss = self.loss_fn(self.wrapped(images), targets) / accum
                self.scaler.scale(loss).backward()
            total += loss.detach().float()
        if not self._all_finite(total):
            return total
        self.scaler.unscale_(self.optimizer)
        if self.settings.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.settings.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        return total

    def _all_finite(self, loss: torch.Tensor) -> bool:
        flag = torch.isfinite(loss).to(torch.float32).reshape(1)
        if self.ctx.distributed:
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
        return bool(flag.item())

    @property
    def lr(self) -> float:
        return float(self.scheduler.get_last_lr()[0])


@dataclass
class FitResult:
    steps: int
    resumed_from: int
    final_loss: float | None
    held_out: dict[int, float] = field(default_factory=dict)
    seconds: float = 0.0


def _micro_batches(loader_iter: Iterator, accum: int) -> list:
    return [next(loader_iter) for _ in range(accum)]


def fit(
    model: torch.nn.Module,
    dataset: Dataset,
    settings: TrainSettings,
    *,
    ctx: DistContext,
    num_classes: int,
    fingerprint: str,
    older_fingerprints: Sequence[str] = (),
    seed: int = 0,
    precision: str = "bf16",
    num_workers: int = 0,
    evaluate: Callable[[torch.nn.Module], float] | None = None,
    run: Any = None,
    progress: bool = True,
    on_step: Callable[[int], None] | None = None,
) -> FitResult:
    """Train ``model`` in place on ``dataset``; resumes from ``<output_dir>/checkpoints``.

    ``evaluate`` (rank 0) returns held-out accuracy for periodic checks; ``run`` is the
    W&B run (``.log``); ``on_step(step)`` is called after each completed step.
    """
    started = time.perf_counter()
    schedule = Schedule.plan(settings, len(dataset), ctx.world_size)
    for seeded in (torch.manual_seed, np.random.seed):
        seeded(step_seed(seed, ctx.rank) % 2**32)
    trainer = Trainer(model, settings, schedule, ctx=ctx, num_classes=num_classes,
                      precision=precision, seed=seed)
    sampler = SeededDistributedSampler(dataset, num_replicas=ctx.world_size, rank=ctx.rank, seed=seed)
    loader = DataLoader(dataset, batch_size=schedule.micro_batch, sampler=sampler, drop_last=True,
                        num_workers=num_workers, pin_memory=ctx.device.type == "cuda",
                        persistent_workers=num_workers > 0,  # not forked again every epoch
                        worker_init_fn=quiet_loader_worker)

    ckpt_file = checkpoint_path(settings.output_dir)
    state = TrainState()
    if ckpt_file.exists():
        state = _resume(trainer, ckpt_file, (fingerprint, *older_fingerprints), ctx, schedule)
    resumed_from = state.step
    if ctx.is_main:
        log.info("training %s (%d per epoch, %s), %s%s", plural(schedule.total_steps, "step"),
                 schedule.steps_per_epoch, describe_batch(settings.batch_size, ctx.world_size,
                                                          schedule.micro_batch, settings.grad_accum),
                 describe_warmup(settings.warmup_steps, schedule.total_steps),
                 f"; resumed at step {resumed_from}" if resumed_from else "")

    result = FitResult(steps=state.step, resumed_from=resumed_from, final_loss=None)
    meter = _StepMeter(schedule.total_steps, state.step, Path(settings.output_dir).name, settings, run,
                       show=progress and ctx.is_main, logs=ctx.is_main)
    last_good = f"{ckpt_file} (step {state.step})" if resumed_from else "none written yet"

    def periodic(every: int) -> bool:
        return bool(every) and state.step % every == 0 and state.step < schedule.total_steps

    with StopOnSignal() as stop:
        while state.step < schedule.total_steps:
            sampler.set_position(state.epoch, state.batch_in_epoch * schedule.micro_batch * settings.grad_accum)
            batches = iter(loader)
            while state.batch_in_epoch < schedule.steps_per_epoch and state.step < schedule.total_steps:
                loss = trainer.train_step(_micro_batches(batches, settings.grad_accum), state.step)
                if not torch.isfinite(loss):
                    meter.close()
                    raise NonFiniteLossError(
                        f"non-finite training loss at step {state.step + 1} of {settings.output_dir}; "
                        f"last good checkpoint: {last_good}. Lower train.lr or check the data."
                    )
                state.step += 1
                state.batch_in_epoch += 1
                result.final_loss = float(loss)
                meter.advance(result.final_loss, trainer.lr, state)
                if periodic(settings.ckpt_every_steps):
                    _save(trainer, ckpt_file, state, schedule, fingerprint, ctx)
                    last_good = f"{ckpt_file} (step {state.step})"
                if evaluate is not None and periodic(settings.eval_every_steps):
                    _periodic_eval(trainer, evaluate, state.step, result, run, ctx)
                if on_step is not None:
                    on_step(state.step)
                signum = stop.agreed(ctx.distributed, ctx.device)
                if signum and state.step < schedule.total_steps:
                    meter.close()
                    _save(trainer, ckpt_file, state, schedule, fingerprint, ctx)
                    stop.leave(signum, state.step, str(ckpt_file))
            if state.batch_in_epoch >= schedule.steps_per_epoch:
                state.epoch += 1
                state.batch_in_epoch = 0
    meter.close()
    result.final_loss = _mean_over_ranks(result.final_loss, ctx)
    result.steps = state.step
    result.seconds = time.perf_counter() - started
    trainer.model.eval()
    return result


class _StepMeter:
    """The progress bar and the training metrics logged every ``log_every_steps`` (loss,
    lr, throughput over the steps since the last log, epoch)."""

    def __init__(self, total: int, initial: int, desc: str, settings: TrainSettings, run: Any, *,
                 show: bool, logs: bool) -> None:
        self.bar = tqdm(total=total, initial=initial, desc=desc, disable=not show, dynamic_ncols=True)
        self.every = settings.log_every_steps if logs else 0
        self.batch_size = settings.batch_size
        self.run = run
        self.window_start, self.window_images = time.perf_counter(), 0

    def advance(self, loss: float, lr: float, state: TrainState) -> None:
        self.window_images += self.batch_size
        self.bar.update(1)
        if not self.every or state.step % self.every:
            return
        elapsed = time.perf_counter() - self.window_start
        metrics = {"train/loss": loss, "train/lr": lr,
                   "train/images_per_s": self.window_images / max(elapsed, 1e-9), "train/epoch": state.epoch}
        self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
        if self.run is not None:
            self.run.log(metrics, step=state.step)
        self.window_start, self.window_images = time.perf_counter(), 0

    def close(self) -> None:
        self.bar.close()


def _mean_over_ranks(value: float | None, ctx: DistContext) -> float | None:
    """Each rank's last loss is over its own shard; the run's is their mean."""
    if value is None or not ctx.distributed:
        return value
    total = torch.tensor([value], dtype=torch.float64, device=ctx.device)
    torch.distributed.all_reduce(total)
    return float(total.item()) / ctx.world_size


def _save(trainer: Trainer, path: Path, state: TrainState, schedule: Schedule, fingerprint: str,
          ctx: DistContext) -> None:
    rng = ctx.all_gather_object(capture_rng())
    if ctx.is_main:
        save_checkpoint(path, model=trainer.model, optimizer=trainer.optimizer,
                        scheduler=trainer.scheduler, scaler=trainer.scaler, state=state, rng=rng,
                        fingerprint=fingerprint)
    ctx.barrier()


def _resume(trainer: Trainer, path: Path, fingerprints: Sequence[str], ctx: DistContext,
            schedule: Schedule) -> TrainState:
    ckpt = load_checkpoint(path, fingerprints[0], fingerprints[1:])
    trainer.model.load_state_dict(ckpt["model"])
    trainer.optimizer.load_state_dict(ckpt["optimizer"])
    trainer.scheduler.load_state_dict(ckpt["scheduler"])
    trainer.scaler.load_state_dict(ckpt["scaler"])
    rng = ckpt.get("rng") or []
    if len(rng) == ctx.world_size:
        restore_rng(rng[ctx.rank])
    step = int(ckpt["step"])
    if ctx.is_main:
        log.info("resuming %s from step %d", path, step)
    return TrainState(step=step, epoch=step // schedule.steps_per_epoch,
                      batch_in_epoch=step % schedule.steps_per_epoch)


def _periodic_eval(trainer: Trainer, evaluate: Callable[[torch.nn.Module], float], step: int,
                   result: FitResult, run: Any, ctx: DistContext) -> None:
    if ctx.is_main:
        trainer.model.eval()
        accuracy = float(evaluate(trainer.model))
        result.held_out[step] = accuracy
        log.info("step %d: held-out accuracy %.4f", step, accuracy)
        if run is not None:
            run.log({"eval/held_out_accuracy": accuracy}, step=step)
    ctx.barrier()


def describe_batch(batch_size: int, world_size: int, micro_batch: int, grad_accum: int) -> str:
    """``global batch 512 = 4 ranks x 64 x 2 accumulation steps``; the split only when there is one."""
    if world_size == 1 and grad_accum == 1:
        return f"batch {batch_size}"
    parts = [plural(world_size, "rank"), str(micro_batch)]
    if grad_accum != 1:
        parts.append(plural(grad_accum, "accumulation step"))
    return f"global batch {batch_size} = {' x '.join(parts)}"
