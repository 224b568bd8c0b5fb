"""Soups: uniform, greedy and learned, plus the baselines cooked beside them.

Public API (stable): ``uniform_soup``, ``greedy_soup``, ``learned_soup``; ingredients may
be safetensors paths, run directories, sweep directories, globs or in-memory state dicts.
The soup stage itself is :func:`soup_exp.soups.stage.run_soups`.
"""

from soup_exp.soups.ensemble import EnsembleResult, greedy_ensemble, logit_ensemble
from soup_exp.soups.greedy import GreedyResult, greedy_soup
from soup_exp.soups.ingredients import (
    EmptyIngredientsError,
    Ingredient,
    IngredientError,
    IngredientMismatchError,
    NonFiniteWeightsError,
    UnsafeCheckpointError,
    load_ingredients,
    resolve_ingredients,
    validate_ingredients,
)
from soup_exp.soups.learned import LearnedResult, learned_soup
from soup_exp.soups.model_stock import ModelStockResult, model_stock
from soup_exp.soups.uniform import uniform_soup
from soup_exp.soups.wise_ft import wise_ft

__all__ = [
    "EmptyIngredientsError", "EnsembleResult", "GreedyResult", "Ingredient", "IngredientError",
    "IngredientMismatchError", "LearnedResult", "ModelStockResult", "NonFiniteWeightsError",
    "UnsafeCheckpointError", "greedy_ensemble", "greedy_soup", "learned_soup", "load_ingredients",
    "logit_ensemble", "model_stock", "resolve_ingredients", "uniform_soup", "validate_ingredients",
    "wise_ft",
]
