"""Evaluation: one pass over each dataset for many models, from a preprocessed cache.

``Evaluator`` / ``build_evaluator`` (evaluator.py), the uint8 cache (cache.py), the split
of an eval transform into cacheable and on-device parts (transforms.py), and the
``soup-exp evaluate`` stage (stage.py, imported lazily by the CLI).
"""

from soup_exp.eval.cache import CachedImages, PreprocessedCache
from soup_exp.eval.evaluator import Evaluator, avg_shifts, build_evaluator
from soup_exp.eval.transforms import SplitTransform, UnsupportedTransformError, split_transform

__all__ = [
    "CachedImages",
    "Evaluator",
    "PreprocessedCache",
    "SplitTransform",
    "UnsupportedTransformError",
    "avg_shifts",
    "build_evaluator",
    "split_transform",
]
