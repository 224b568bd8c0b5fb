"""The settings part of an analysis's resume key.

An analysis resumes by a key that hashes, among its inputs, the settings its numbers depend
on (:meth:`~soup_exp.analysis.context.AnalysisContext.key_for`). This builds that part from
the typed settings the stage made, so the key never reads the root config. Its value must
not change: a different key re-runs every analysis (``tests/analysis/test_settings_key.py``
pins it).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from soup_exp.evaluation.settings import EvalSettings
from soup_exp.soups.settings import SoupSettings
from soup_exp.utils.config import to_plain


def analysis_key_settings(model: Mapping, evaluation: EvalSettings, soup: SoupSettings) -> dict[str, Any]:
    """The model subtree, the data subtree, the evaluation and soup numerics, the device
    and the seed, as the key has always hashed them."""
    return {
        "model": to_plain(model), "data": to_plain(evaluation.data),
        "eval": {"datasets": list(evaluation.datasets), "precision": evaluation.precision,
                 "ensemble_logits": evaluation.ensemble_logits},
        "soup": {"arithmetic": soup.arithmetic, "accumulate_dtype": soup.accumulate_dtype_name},
        "device": evaluation.device, "seed": soup.seed,
    }
