"""Evaluation: one pass over each dataset for many models, from a preprocessed cache.

``Evaluator`` / ``build_evaluator`` (evaluator.py), the uint8 cache (cache.py), and the split
of an eval transform into cacheable and on-device parts (transforms.py). The
``soup-exp evaluate`` stage that uses them is :mod:`soup_exp.evaluate`.
"""

from soup_exp.evaluation.cache import CachedImages, PreprocessedCache
from soup_exp.evaluation.evaluator import Evaluator, build_evaluator
from soup_exp.evaluation.transforms import (
    SplitTransform,
    UnsupportedTransformError,
    split_transform,
)

__all__ = [
    "CachedImages",
    "Evaluator",
    "PreprocessedCache",
    "SplitTransform",
    "UnsupportedTransformError",
    "build_evaluator",
    "split_transform",
]
