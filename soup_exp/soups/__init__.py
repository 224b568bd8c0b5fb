"""Soups: uniform, greedy and learned, plus the baselines cooked beside them.

Public API (stable): ``uniform_soup``, ``greedy_soup``, ``learned_soup``; ingredients may
be safetensors paths, run directories, sweep directories, globs or in-memory state dicts.

A weight-space merge can also be a per-tensor kernel, ``@kernel def fn(tensors, base,
**params) -> Tensor``, which the streaming engine of :mod:`.kernels` runs (Model Stock,
WiSE-FT and the merges of docs/recipes.md are written so). Each algorithm module also holds its recipe, ``<name>_recipe(ctx, **params)``, which the
``recipes/<name>.yaml`` config names; :mod:`.recipe` says what a recipe is (a user's is
written the same way: ``Soup``, ``Range``) and :mod:`.context` what it is given
(``SoupContext``: a ``Pool``, a ``Judge`` and a ``SoupStore``). The soup stage itself is :func:`soup_exp.soup.run_soups`.
"""

from soup_exp.soups.context import SoupContext
from soup_exp.soups.ensemble import EnsembleResult, greedy_ensemble, logit_ensemble
from soup_exp.soups.greedy import GreedyResult, greedy_soup
from soup_exp.soups.ingredients import (
    EmptyIngredientsError,
    IngredientError,
    IngredientMismatchError,
    LazyWeights,
    NonFiniteWeightsError,
    UnsafeCheckpointError,
    load_ingredients,
    resolve_ingredients,
    validate_ingredients,
)
from soup_exp.soups.judge import Judge
from soup_exp.soups.kernels import Kernel, Tensors, kernel, merge_tensors
from soup_exp.soups.learned import LearnedResult, learned_soup
from soup_exp.soups.model_stock import ModelStockResult, model_stock_soup
from soup_exp.soups.pool import Pool
from soup_exp.soups.recipe import Range, Soup
from soup_exp.soups.store import SoupStore
from soup_exp.soups.uniform import uniform_soup
from soup_exp.soups.wise_ft import wise_ft_soups

__all__ = [
    "EmptyIngredientsError", "EnsembleResult", "Kernel", "Range", "Tensors", "Soup", "SoupContext", "GreedyResult", "LazyWeights", "IngredientError",
    "IngredientMismatchError", "Judge", "LearnedResult", "ModelStockResult", "NonFiniteWeightsError", "Pool", "SoupStore",
    "UnsafeCheckpointError", "greedy_ensemble", "greedy_soup", "kernel", "learned_soup", "load_ingredients",
    "logit_ensemble", "merge_tensors", "model_stock_soup", "resolve_ingredients", "uniform_soup", "validate_ingredients",
    "wise_ft_soups",
]
