"""What every recipe is handed: the pool, a judge, its store, the W&B run and the numerics.

Built by the stage for each recipe (:func:`soup_exp.stages.roles.SoupRoles.context`), never
changed while it cooks. The pool and judge are the stage's, shared by every recipe; the
store and what the recipe reads (the inputs of its soups) are the recipe's own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from soup_exp.soups.judge import Judge
from soup_exp.soups.pool import Pool
from soup_exp.soups.store import SoupStore
from soup_exp.utils.runtime import resolve_device


@dataclass(frozen=True)
class SoupContext:
    """``pool`` (ingredients, scores, bases, earlier soups), ``judge`` (held-out evaluation),
    ``store`` (freshness, resume state), the ``run`` and the settings a recipe cooks with."""

    pool: Pool
    judge: Judge
    store: SoupStore
    run: Any
    recipe: str
    params: dict[str, Any]
    accumulate_dtype: torch.dtype
    arithmetic: str
    progress: bool
    kernel_device_name: str

    @property
    def kernel_device(self) -> torch.device:
        """Where per-tensor kernels compute (``soup.kernel_device``)."""
        return resolve_device(self.kernel_device_name)

    def log_table(self, key: str, rows: list[dict[str, Any]]) -> None:
        """A W&B table under ``<recipe>/<key>`` from a list of same-keyed dicts."""
        if rows:
            columns = list(rows[0])
            self.run.log_table(f"{self.recipe}/{key}", columns, [[row.get(c) for c in columns] for row in rows])
