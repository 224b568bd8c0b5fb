"""What the pool and the judge share: one plugin's view records what that plugin reads,
while every view shares the role's caches (evaluator, logits, scores)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any, Self


class SharedCaches:
    """A role built once per stage and handed to each plugin as a view (:meth:`_view`)."""

    _cache: dict[str, Any]

    def _memo(self, key: str, build: Callable[[], Any]) -> Any:
        """``build()``, once for this role and all its views."""
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]

    def _view(self) -> Self:
        """A shallow copy: the same caches, its own attributes once reassigned."""
        return copy.copy(self)
