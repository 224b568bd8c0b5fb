"""Fisher-weighted averaging (Matena & Raffel, NeurIPS 2022, *Merging Models with
Fisher-Weighted Averaging*): each parameter entry is the average of the ingredients' entries
weighted by each ingredient's diagonal Fisher information there.

The estimator follows WiSE-FT's ``src/models/fisher.py`` (mlfoundations/wise-ft, written
by Matena): batch size 1; for every example a label is *sampled* from the model's own
softmax (``torch.multinomial``), the gradient of the cross-entropy at that sampled label
(minus the log-likelihood of the label) is squared entry by entry, and the squares are
averaged over the examples. The true labels are not used (it is the Fisher, not the
empirical Fisher); one sampled label per example is an unbiased estimate of Matena &
Raffel's exact expectation over labels (their ``model_merging`` code), at the cost of one
backward pass instead of one per class. Here the pass runs over the held-out set (the
first ``examples`` images of the judge's seeded order, or all), in eval mode: WiSE-FT calls
``model.train()``, which changes nothing for CLIP ViTs (no dropout, no batch norm). Labels
are drawn from a generator seeded by the judge's seed and the ingredient's name, so a
Fisher is a function of its ingredient, not of the pool around it.

The merge is WiSE-FT's ``_merge`` for N models: with ``c_i = 1/N``,
``theta = sum_i c_i max(F_i, floor) theta_i / sum_i c_i max(F_i, floor)``; a tensor with
no Fisher (a buffer, a parameter no gradient reached) gets ``F = 1``, the plain mean, as
WiSE-FT's ``ones``. Two options of Matena & Raffel's ``merging.py``: ``favor_target`` floors
only the target's Fisher (here the best ingredient on held-out), so where every Fisher is
below the floor the target's value wins; ``normalize`` divides ``c_i`` by the L2 norm of
``F_i`` over the whole model.

Fishers are cached per ingredient (:mod:`.statistics`); the merge streams tensor by tensor
on the kernel engine, reading one ingredient tensor and one Fisher tensor at a time.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Annotated

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from soup_exp.soups.context import SoupContext
from soup_exp.soups.ingredients import LazyWeights
from soup_exp.soups.kernels import Tensors, merge_tensors
from soup_exp.soups.recipe import Range, Soup
from soup_exp.soups.statistics import held_out_examples, ingredient_statistics, weights_on
from soup_exp.utils.hashing import stable_hash

ESTIMATOR = "sampled_label_per_example"  # WiSE-FT's fisher.py


def label_generator(seed: int, ingredient: str) -> torch.Generator:
    """The generator an ingredient's sampled labels are drawn from (CPU, so any device agrees)."""
    return torch.Generator().manual_seed(int(stable_hash({"seed": seed, "ingredient": ingredient}), 16) % 2 ** 63)


def diagonal_fisher(model: nn.Module, weights: Mapping[str, Tensor],
                    batches: Iterable[tuple[Tensor, Tensor]], generator: torch.Generator) -> dict[str, Tensor]:
    """WiSE-FT's estimate of the diagonal Fisher of ``model`` with ``weights`` (a state dict,
    through ``functional_call``): the mean over examples of the squared gradient of the
    cross-entropy at a label sampled from the model's softmax. Parameters no gradient
    reaches have no entry. Float parameters are taken in fp32."""
    names = [name for name, _ in model.named_parameters() if name in weights and weights[name].is_floating_point()]
    params = {name: weights[name].detach().float().requires_grad_(True) for name in names}
    rest = {key: tensor for key, tensor in weights.items() if key not in params}
    squares = {name: torch.zeros_like(p) for name, p in params.items()}
    counts = dict.fromkeys(names, 0)
    with torch.enable_grad():
        for images, _ in batches:
            for image in images.split(1):
                logits = functional_call(model, {**params, **rest}, (image.float(),))
                probs = logits.detach().float().softmax(dim=-1).cpu()
                label = torch.multinomial(probs, 1, generator=generator).view(-1).to(logits.device)
                loss = F.cross_entropy(logits.float(), label)
                grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
                for name, grad in zip(names, grads, strict=True):
                    if grad is not None:
                        squares[name].add_(grad.square())
                        counts[name] += 1
    return {name: squares[name].div_(counts[name]) for name in names if counts[name]}


def fisher_kernel(tensors: Tensors, base: Tensor | None, *, fishers: Sequence[LazyWeights],
                  coefficients: Sequence[float], floors: Sequence[float]) -> Tensor:
    """``sum_i c_i max(F_i, floor_i) w_i / sum_i c_i max(F_i, floor_i)`` for one tensor, the
    ingredients and their Fishers streamed (``F_i = 1`` where ingredient i has no Fisher for it)."""
    numerator: Tensor | None = None
    denominator: Tensor | None = None
    for weights, fisher, coefficient, floor in zip(tensors, fishers, coefficients, floors, strict=True):
        if tensors.key in fisher.tensor_keys():
            diag = fisher.get(tensors.key).to(weights).clamp_(min=floor)
        else:
            diag = torch.ones_like(weights)
        diag.mul_(coefficient)
        if numerator is None:
            numerator, denominator = diag * weights, diag
        else:
            numerator.addcmul_(diag, weights)
            denominator.add_(diag)
    return numerator.div_(denominator)


def fisher_norm(fisher: LazyWeights) -> float:
    """The L2 norm of a whole Fisher (Matena & Raffel's ``normalize_fishers``), streamed."""
    return math.sqrt(sum(float(tensor.double().square().sum()) for _, tensor in fisher.tensors()))


def fisher_recipe(
    ctx: SoupContext,
    *,
    examples: Annotated[int, Range(1)] | None,
    batch_size: Annotated[int, Range(1)],
    fisher_floor: Annotated[float, Range(0.0, low_open=True)],
    favor_target: bool,
    normalize: bool,
) -> Soup:
    """Recipe ``fisher``: each ingredient's diagonal Fisher on held-out (cached), then the
    Fisher-weighted mean of the pool, tensor by tensor."""
    device = ctx.judge.device
    skeleton = ctx.judge.skeleton.to(device).eval()
    seed = ctx.judge.recorded_seed()  # the labels are drawn from it, even for Fishers read from the cache

    def compute(ing: LazyWeights) -> dict[str, Tensor]:
        return diagonal_fisher(skeleton, weights_on(ing, device), held_out_examples(ctx, batch_size, examples),
                               label_generator(seed, ing.name))

    statistics = ingredient_statistics(ctx, "fisher", {"estimator": ESTIMATOR, "examples": examples, "seed": seed},
                                       compute)
    n = len(statistics.files)
    coefficients = [1.0 / n] * n
    if normalize:
        coefficients = [c / max(fisher_norm(f), torch.finfo(torch.float32).tiny)
                        for c, f in zip(coefficients, statistics.files, strict=True)]
    target = ctx.pool.best_index if favor_target else None
    floors = [fisher_floor if target is None or i == target else 0.0 for i in range(n)]
    state_dict = merge_tensors(ctx.pool.ingredients, fisher_kernel,
                               params={"fishers": statistics.files, "coefficients": coefficients, "floors": floors},
                               accumulate_dtype=ctx.accumulate_dtype, device=ctx.kernel_device,
                               progress=ctx.progress, name=ctx.recipe)
    info = {"fishers_computed": statistics.computed, "fishers_reused": statistics.reused}
    if target is not None:
        info["target"] = ctx.pool.names[target]
    return Soup(state_dict, info)
