"""RegMean (Jin et al., ICLR 2023, *Dataless Knowledge Fusion by Merging Weights of Language
Models*): every linear layer is merged as the least-squares solution that reproduces each
ingredient's outputs on its own inputs, ``W* = (sum_i G_i)^-1 sum_i G_i W_i`` in the
``y = x W`` convention (here ``W*^T``, torch's ``weight`` being ``W^T``), with ``G_i = X_i^T X_i``
the Gram matrix of that layer's inputs under ingredient i on the held-out set; every other
tensor (biases, LayerNorms, embeddings, convolutions) is the uniform mean. As the official
code (bloomberg/dataless-model-merging, ``avg_merger.py``), each ``G_i`` is the mean of
``x^T x`` over every input row (tokens of every image), and its off-diagonal entries are
multiplied by ``alpha`` before merging (``regmean_reduce_nondiag``); alpha = 1 is the plain
least-squares merge, alpha = 0 a per-input-feature weighted mean.

Linear layers are ``nn.Linear`` modules and the two projections of ``nn.MultiheadAttention``
(open_clip's ViTs): MHA calls its ``in_proj_weight`` and ``out_proj.weight`` through
``F.linear`` inside ``F.multi_head_attention_forward``, so no hook on ``out_proj`` fires. The
Gram of MHA's input serves ``in_proj_weight``; ``out_proj``'s input (the heads' attention
output, concatenated) is recomputed in the hook from the same input, weights and mask.
Only self-attention (query, key and value the same tensor), without key padding masks or
bias_k/bias_v, is supported; anything else is refused by name. open_clip's ``proj`` (a bare
parameter used as ``x @ proj``) and the patch convolution are averaged.

Grams are cached per ingredient (:mod:`.statistics`); the merge streams one tensor name at a
time on the kernel engine, holding two Gram-sized sums and one ingredient's Gram and weight.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Annotated, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from soup_exp.errors import ConfigError
from soup_exp.soups.context import SoupContext
from soup_exp.soups.ingredients import LazyWeights
from soup_exp.soups.kernels import Tensors, merge_tensors
from soup_exp.soups.recipe import Range, Soup
from soup_exp.soups.statistics import held_out_examples, ingredient_statistics, weights_on

log = logging.getLogger(__name__)

MHA_ATTN_MASK_POSITION = 5  # forward(query, key, value, key_padding_mask, need_weights, attn_mask, ...)


class _GramSums:
    """Running ``sum x^T x`` and row counts per weight key."""

    def __init__(self) -> None:
        self.sums: dict[str, Tensor] = {}
        self.rows: dict[str, int] = {}

    def add(self, key: str, inputs: Tensor) -> None:
        rows = inputs.detach().reshape(-1, inputs.shape[-1]).float()
        product = rows.T @ rows
        if key in self.sums:
            self.sums[key].add_(product)
        else:
            self.sums[key] = product
        self.rows[key] = self.rows.get(key, 0) + rows.shape[0]

    def means(self) -> dict[str, Tensor]:
        return {key: total / self.rows[key] for key, total in self.sums.items()}


def attention_output_before_projection(mha: nn.MultiheadAttention, x: Tensor, attn_mask: Tensor | None,
                                       is_causal: bool = False) -> Tensor:
    """What ``mha``'s ``out_proj`` multiplies for self-attention on ``x``: the heads' outputs,
    concatenated, in ``x``'s layout."""
    batch_first_x = x if mha.batch_first else x.transpose(0, 1)
    if batch_first_x.dim() == 2:
        batch_first_x = batch_first_x.unsqueeze(0)
    batch, length, width = batch_first_x.shape
    heads, head_dim = mha.num_heads, width // mha.num_heads
    q, k, v = F.linear(batch_first_x, mha.in_proj_weight, mha.in_proj_bias).chunk(3, dim=-1)
    q, k, v = (t.reshape(batch, length, heads, head_dim).transpose(1, 2) for t in (q, k, v))
    mask = attn_mask
    if mask is not None:
        if mask.dtype == torch.bool:
            mask = ~mask  # MHA masks out True; scaled_dot_product_attention keeps True
        if mask.dim() == 3:
            mask = mask.reshape(batch, heads, length, length)
    heads_out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal and mask is None)
    return heads_out.transpose(1, 2).reshape(batch, length, width)


def _check_attention(name: str, mha: nn.MultiheadAttention) -> None:
    if not mha._qkv_same_embed_dim or mha.bias_k is not None or mha.add_zero_attn:
        raise ConfigError(f"RegMean: attention '{name}' has separate q/k/v projections, bias_k/bias_v or "
                          "add_zero_attn; only open_clip-style self-attention (in_proj_weight) is supported")


def _hooks(model: nn.Module, grams: _GramSums) -> list[Any]:
    """Forward pre-hooks that add every linear layer's inputs to ``grams``."""
    handles = []
    attention_out = {f"{name}.out_proj" for name, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)}
    for name, module in model.named_modules():
        if isinstance(module, nn.MultiheadAttention):
            _check_attention(name, module)
            handles.append(module.register_forward_pre_hook(_attention_hook(name, grams), with_kwargs=True))
        elif isinstance(module, nn.Linear) and name not in attention_out:
            handles.append(module.register_forward_pre_hook(_linear_hook(f"{name}.weight", grams)))
    return handles


def _linear_hook(key: str, grams: _GramSums) -> Callable[..., None]:
    def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
        grams.add(key, args[0])
    return hook


def _attention_hook(name: str, grams: _GramSums) -> Callable[..., None]:
    def hook(module: nn.MultiheadAttention, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        names = ("query", "key", "value")
        query, key, value = (args[i] if len(args) > i else kwargs.get(n) for i, n in enumerate(names))
        if not (query is key and key is value):
            raise ConfigError(f"RegMean: attention '{name}' is called with different query, key and value; "
                              "only self-attention is supported")
        if (args[3] if len(args) > 3 else kwargs.get("key_padding_mask")) is not None:
            raise ConfigError(f"RegMean: attention '{name}' is called with a key_padding_mask; not supported")
        mask = args[MHA_ATTN_MASK_POSITION] if len(args) > MHA_ATTN_MASK_POSITION else kwargs.get("attn_mask")
        grams.add(f"{name}.in_proj_weight", query)
        grams.add(f"{name}.out_proj.weight",
                  attention_output_before_projection(module, query, mask, bool(kwargs.get("is_causal", False))))
    return hook


@torch.no_grad()
def input_grams(model: nn.Module, weights: Mapping[str, Tensor], batches: Iterable[tuple[Tensor, Tensor]]
                ) -> dict[str, Tensor]:
    """For every linear layer of ``model`` run with ``weights`` (float tensors taken in fp32),
    the mean of ``x^T x`` over the rows of its inputs on ``batches``, keyed by the layer's
    weight name."""
    grams = _GramSums()
    weights = {key: tensor.float() if tensor.is_floating_point() else tensor for key, tensor in weights.items()}
    handles = _hooks(model, grams)
    try:
        for images, _ in batches:
            functional_call(model, weights, (images.float(),))
    finally:
        for handle in handles:
            handle.remove()
    return grams.means()


def reduced_off_diagonal(gram: Tensor, alpha: float) -> Tensor:
    """``gram`` with its off-diagonal entries multiplied by ``alpha`` (its diagonal kept)."""
    scaled = gram * alpha
    scaled.diagonal().copy_(gram.diagonal())
    return scaled


def regmean_kernel(tensors: Tensors, base: Tensor | None, *, grams: Sequence[LazyWeights], alpha: float) -> Tensor:
    """RegMean for a linear weight with a Gram in every ingredient, the uniform mean otherwise."""
    key = tensors.key
    with_gram = [key in gram.tensor_keys() for gram in grams]
    if not any(with_gram):
        total: Tensor | None = None
        for weights in tensors:
            total = weights.clone() if total is None else total.add_(weights)
        return total.div_(len(tensors))
    if not all(with_gram):
        missing = [g.name for g, has in zip(grams, with_gram, strict=True) if not has]
        raise ConfigError(f"RegMean: tensor '{key}' has a Gram in some ingredients but not in {', '.join(missing)}")
    gram_sum: Tensor | None = None
    product_sum: Tensor | None = None
    for weights, gram_file in zip(tensors, grams, strict=True):
        gram = reduced_off_diagonal(gram_file.get(key).to(weights), alpha)
        product = gram @ weights.T
        if gram_sum is None:
            gram_sum, product_sum = gram, product
        else:
            gram_sum.add_(gram)
            product_sum.add_(product)
    solution, info = torch.linalg.solve_ex(gram_sum, product_sum)
    if info.item() != 0 or not torch.isfinite(solution).all():
        log.warning("RegMean: the summed Gram of '%s' is singular; using its pseudo-inverse", key)
        solution = torch.linalg.pinv(gram_sum, hermitian=True) @ product_sum
    return solution.T.contiguous()


def regmean_recipe(
    ctx: SoupContext,
    *,
    alpha: Annotated[float, Range(0.0, 1.0)],
    examples: Annotated[int, Range(1)] | None,
    batch_size: Annotated[int, Range(1)],
) -> Soup:
    """Recipe ``regmean``: each ingredient's Gram matrices on held-out (cached), then
    RegMean layer by layer."""
    device = ctx.judge.device
    skeleton = ctx.judge.skeleton.to(device).eval()

    def compute(ing: LazyWeights) -> dict[str, Tensor]:
        return input_grams(skeleton, weights_on(ing, device), held_out_examples(ctx, batch_size, examples))

    settings: dict[str, Any] = {"examples": examples}
    if examples is not None:
        settings["seed"] = ctx.judge.recorded_seed()  # which images come first
    statistics = ingredient_statistics(ctx, "gram", settings, compute)
    state_dict = merge_tensors(ctx.pool.ingredients, regmean_kernel,
                               params={"grams": statistics.files, "alpha": alpha},
                               accumulate_dtype=ctx.accumulate_dtype, device=ctx.kernel_device,
                               progress=ctx.progress, name=ctx.recipe)
    return Soup(state_dict, {"grams_computed": statistics.computed, "grams_reused": statistics.reused,
                             "regmean_tensors": sorted(statistics.files[0].tensor_keys())})
