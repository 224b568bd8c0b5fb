"""Learned soups: mixing coefficients trained by gradient descent on the held-out set.

As in the paper: raw weights start equal (so step 0 *is* the uniform soup), a softmax
across ingredients makes them positive and sum to one (per model, or per parameter
tensor "by layer"), a temperature ``beta`` (init 1) scales the logits, AdamW (lr 0.05,
no weight decay) minimises cross-entropy on shuffled held-out batches for 5 epochs.

Unlike the reference (all 72 models as Python dicts, 490 GB of RAM), each parameter is
one stacked ``(N, *shape)`` tensor mixed by a single ``tensordot`` and the model runs
through ``torch.func.functional_call`` over one skeleton. Stacks live on the accelerator
when they fit; otherwise they stay in pinned host memory and are copied in per use (the
backward pass copies again instead of keeping device copies alive).

With a ``state_file`` the soup resumes where it stopped (:mod:`.learned_state`): the
coefficients, beta and AdamW's moments are saved after every epoch, and SIGINT/SIGTERM
(:class:`~soup_exp.cluster.signals.StopOnSignal`) stop it at the next batch with its state
saved. Each epoch's batch order depends only on the epoch, so a resumed soup ends with the
coefficients of an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from torch import nn
from torch.func import functional_call
from tqdm.auto import tqdm

from soup_exp.cluster.signals import StopOnSignal
from soup_exp.soups.context import SoupContext
from soup_exp.soups.freshness import pool_identity
from soup_exp.soups.ingredients import LazyWeights, WeightsLike, float_keys, load_ingredients
from soup_exp.soups.learned_state import Progress, load_state, save_state
from soup_exp.soups.recipe import Range, Soup

log = logging.getLogger(__name__)

Mode = Literal["by_layer", "per_model"]
Batches = Callable[[int], Iterable[tuple[torch.Tensor, torch.Tensor]]] | Iterable[tuple[torch.Tensor, torch.Tensor]]
DEVICE_MEMORY_FRACTION = 0.6
STATE_FILE = "state.safetensors"


@dataclass
class LearnedResult:
    state_dict: dict[str, torch.Tensor]
    coefficients: list[float] | dict[str, list[float]]  # per model, or per parameter tensor
    beta: float
    curve: list[dict[str, float]]  # one entry per step: epoch, step, loss
    names: list[str] = field(default_factory=list)
    mode: str = "by_layer"
    placement: str = "device"


class _MixFromHost(torch.autograd.Function):
    """``tensordot(weights, stack)`` for a stack kept in (pinned) host memory."""

    @staticmethod
    def forward(ctx, weights: torch.Tensor, stack: torch.Tensor) -> torch.Tensor:
        ctx.stack = stack
        ctx.save_for_backward(weights)
        on_device = stack.to(weights.device, non_blocking=True)
        return torch.tensordot(weights.to(on_device.dtype), on_device, dims=1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (weights,) = ctx.saved_tensors
        on_device = ctx.stack.to(grad.device, non_blocking=True)
        grad_weights = on_device.flatten(1).to(grad.dtype) @ grad.flatten()
        return grad_weights.to(weights.dtype), None


def _mix(weights: torch.Tensor, stack: torch.Tensor) -> torch.Tensor:
    if stack.device == weights.device:
        return torch.tensordot(weights.to(stack.dtype), stack, dims=1)
    return _MixFromHost.apply(weights, stack)


def _stacks_fit(nbytes: int, device: torch.device) -> bool:
    if device.type != "cuda":
        return True
    free, _ = torch.cuda.mem_get_info(device)
    return nbytes <= DEVICE_MEMORY_FRACTION * free


def stack_ingredients(ingredients, keys: Sequence[str], device: torch.device, progress: bool = False
                      ) -> tuple[dict[str, torch.Tensor], str]:
    """One ``(N, *shape)`` tensor per key, read key by key into its final home."""
    n = len(ingredients)
    first = ingredients[0]
    nbytes = sum(torch.Size(first.spec(k)[1]).numel() * first.spec(k)[0].itemsize for k in keys) * n
    on_device = _stacks_fit(nbytes, device)
    home = device if on_device else torch.device("cpu")
    pin = device.type == "cuda" and not on_device
    placement = "device" if on_device or device.type == "cpu" else "pinned_host"
    log.info("learned soup: %d ingredients, %.2f GiB of stacked weights on %s", n, nbytes / 2**30,
             home if not pin else "pinned host memory")
    stacks: dict[str, torch.Tensor] = {}
    for key in keys:
        dtype, shape = first.spec(key)
        stacks[key] = torch.empty((n, *shape), dtype=dtype, pin_memory=pin, device=home)
    for index, ing in enumerate(tqdm(ingredients, desc="loading ingredients", disable=not progress, leave=False)):
        for key, tensor in ing.tensors(keys):
            stacks[key][index].copy_(tensor)
    return stacks, placement


def prepare_learning(ingredients: WeightsLike | Iterable[WeightsLike], skeleton: nn.Module, mode: str,
                     device: str | torch.device | None, what: str
                     ) -> tuple[list[LazyWeights], torch.device, list[str], dict[str, torch.Tensor], nn.Module]:
    """What every learned soup starts from: the checked ingredients, the device (the
    skeleton's unless given), the keys whose coefficients are learned, the tensors copied
    from the first ingredient (integer buffers), and the skeleton frozen on the device."""
    if mode not in ("by_layer", "per_model"):
        raise ValueError(f"{what} mode must be 'by_layer' or 'per_model', got {mode!r}")
    ings = load_ingredients(ingredients)
    device = torch.device(device) if device is not None else next(skeleton.parameters()).device
    keys = float_keys(ings[0])
    constants = {k: ings[0].get(k).to(device) for k in ings[0].tensor_keys() if k not in set(keys)}
    skeleton = skeleton.to(device).eval()
    for p in skeleton.parameters():
        p.requires_grad_(False)
    return ings, device, keys, constants, skeleton


def learned_soup(
    ingredients: WeightsLike | Iterable[WeightsLike],
    skeleton: nn.Module,
    batches: Batches,
    *,
    mode: Mode = "by_layer",
    epochs: int = 5,
    lr: float = 0.05,
    weight_decay: float = 0.0,
    device: str | torch.device | None = None,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    on_step: Callable[[dict[str, float]], None] | None = None,
    progress: bool = False,
    state_file: str | Path | None = None,
    inputs: Mapping[str, Any] | None = None,
) -> LearnedResult:
    """Learn soup coefficients (and beta) on held-out ``batches``.

    ``batches`` is either ``epoch -> iterable of (images, targets)`` (e.g. the evaluator's
    shuffled held-out batches with a per-epoch generator) or a re-iterable of batches; the
    same epoch must give the same batches every time for a resumed soup to match.
    ``skeleton`` is a module whose ``state_dict`` keys are the ingredients' keys.

    With ``state_file`` the soup resumes from the state saved there, if it was saved for the
    same ``inputs``: by default the pool (names and weights files) and the settings above;
    a caller adds what else made the soup (the data and its order, e.g. the soup stage's
    recorded inputs). A signal then stops it at the next batch, with its state saved
    (:class:`~soup_exp.cluster.signals.StopRequested`). The state is left for the caller to
    remove once the soup is safely written (the soup stage does).
    """
    ings, device, keys, constants, skeleton = prepare_learning(ingredients, skeleton, mode, device, "learned soup")
    names = [ing.name for ing in ings]
    stacks, placement = stack_ingredients(ings, keys, device, progress)

    n = len(ings)
    rows = len(keys) if mode == "by_layer" else 1
    raw = torch.zeros(rows, n, device=device, requires_grad=True)
    beta = torch.ones((), device=device, requires_grad=True)
    optimizer = torch.optim.AdamW([raw, beta], lr=lr, weight_decay=weight_decay)
    loss_fn = loss_fn or nn.functional.cross_entropy

    def mixed() -> dict[str, torch.Tensor]:
        alphas = raw.softmax(dim=-1)
        params = {k: _mix(alphas[i if mode == "by_layer" else 0], stacks[k]) for i, k in enumerate(keys)}
        params.update(constants)
        return params

    state_path = Path(state_file) if state_file is not None else None
    bound = {"pool": pool_identity(ings), "params": {"mode": mode, "epochs": epochs, "lr": lr,
                                                       "weight_decay": weight_decay}, **(inputs or {})}
    trained = {"raw": raw, "beta": beta}
    at = Progress()
    if state_path is not None:
        at = load_state(state_path, bound, trained, optimizer) or at
        if at.step or at.epoch:
            where = (f"all {epochs} epochs done" if at.epoch >= epochs
                     else f"epoch {at.epoch + 1} of {epochs}, {at.batch} batches into it")
            log.info("resuming learned soup from %s: %s (step %d)", state_path, where, at.step)

    def save() -> None:
        if state_path is not None:
            save_state(state_path, bound, at, trained, optimizer)

    def stop_if_signalled(saved: bool) -> None:
        if stop is not None and stop.signum:
            if not saved:
                save()
            epoch = at.epoch if at.batch else at.epoch - 1  # the epoch of the last step
            stop.leave(stop.signum, at.step, str(state_path), where=f"step {at.step}, epoch {epoch + 1} of {epochs}")

    with StopOnSignal() if state_path is not None else contextlib.nullcontext() as stop:
        while at.epoch < epochs:
            epoch_batches = batches(at.epoch) if callable(batches) else batches
            for images, targets in tqdm(itertools.islice(epoch_batches, at.batch, None), initial=at.batch,
                                        desc=f"learned soup ({mode}) epoch {at.epoch + 1}/{epochs}",
                                        disable=not progress, leave=False):
                images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
                logits = functional_call(skeleton, mixed(), (images,))
                loss = loss_fn(beta * logits, targets)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                point = {"epoch": at.epoch, "step": at.step, "loss": float(loss.detach())}
                at.curve.append(point)
                at.step += 1
                at.batch += 1
                if on_step is not None:
                    on_step(point)
                stop_if_signalled(saved=False)
            at.epoch, at.batch = at.epoch + 1, 0
            save()
            stop_if_signalled(saved=True)
    curve = at.curve

    with torch.no_grad():
        final = {k: v.detach().to("cpu") for k, v in mixed().items()}
        alphas = raw.softmax(dim=-1).cpu()
    state_dict = {k: final[k] for k in ings[0].tensor_keys()}
    coefficients: Any = (alphas[0].tolist() if mode == "per_model"
                         else {k: alphas[i].tolist() for i, k in enumerate(keys)})
    return LearnedResult(state_dict, coefficients, float(beta.detach()), curve, names, mode, placement)


def learned_recipe(
    ctx: SoupContext,
    *,
    mode: Mode,
    lr: Annotated[float, Range(0.0, low_open=True)],
    epochs: Annotated[int, Range(1)],
    batch_size: Annotated[int, Range(1)],
    weight_decay: Annotated[float, Range(0.0)],
) -> Soup:
    """Recipes ``learned_per_model`` and ``learned_by_layer``: coefficients learned on held-out,
    resumable after every epoch and at the batch a signal stops them."""
    device = ctx.judge.device  # builds the held-out evaluator: its data and numerics are inputs too
    result = learned_soup(ctx.pool.ingredients, ctx.judge.skeleton,
                          lambda epoch: ctx.judge.heldout_batches(batch_size, epoch),
                          mode=mode, epochs=epochs, lr=lr, weight_decay=weight_decay, device=device,
                          on_step=step_logger(ctx), progress=ctx.progress, state_file=ctx.store.state_file(STATE_FILE),
                          inputs={**ctx.store.inputs(), "seed": ctx.judge.seed})
    log_learned(ctx, result.names, result.coefficients, result.curve)
    ctx.run.summary({f"{ctx.recipe}/beta": result.beta})
    return Soup(result.state_dict, {"placement": result.placement}, coefficients=result.coefficients,
                beta=result.beta, curve=result.curve, held_out_accuracy=ctx.judge.evaluate(result.state_dict))


def step_logger(ctx: SoupContext) -> Callable[[dict[str, float]], None]:
    """An ``on_step`` that logs a learned soup's loss to the stage's W&B run."""
    def log_step(point: dict[str, float]) -> None:
        ctx.run.log({f"{ctx.recipe}/loss": point["loss"], f"{ctx.recipe}/step": point["step"]})
    return log_step


def log_learned(ctx: SoupContext, names: Sequence[str], coefficients: list[float] | dict[str, list[float]],
                curve: list[dict[str, float]]) -> None:
    """A learned soup's coefficients (per model, or per parameter tensor) and loss curve as W&B tables."""
    if isinstance(coefficients, Mapping):
        rows = [{"parameter": key, "ingredient": n, "coefficient": c}
                for key, row in coefficients.items() for n, c in zip(names, row, strict=True)]
    else:
        rows = [{"ingredient": n, "coefficient": c} for n, c in zip(names, coefficients, strict=True)]
    ctx.log_table("coefficients", rows)
    ctx.log_table("curve", curve)
