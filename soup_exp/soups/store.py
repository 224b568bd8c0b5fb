"""Where a recipe's soups and resumable state live, and whether a soup is still fresh."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from soup_exp.artifacts import SOUP_FILE
from soup_exp.soups.freshness import as_json, describe_change, recorded_inputs

log = logging.getLogger(__name__)


def logits_dir(soups_dir: Path) -> Path:
    """Where logits are cached (shared by the soup and analyze stages)."""
    return Path(soups_dir) / ".cache" / "logits"


class SoupStore:
    """One recipe's part of ``soups_dir``: finished markers checked against the inputs its
    soups are cooked from (``finished``, ``inputs``) and its resume state (``state_file``)."""

    def __init__(self, soups_dir: Path, recipe: str, always: Mapping[str, Any], used: dict[str, Any],
                 reads: Callable[[Mapping[str, Any]], Mapping[str, Callable[[], Any]]]) -> None:
        self.soups_dir = Path(soups_dir)
        self.recipe = recipe
        self._always = dict(always)  # recipe, params, pool, numerics: inputs of every soup
        self._used = used  # what the recipe read besides the pool (the pool and judge record it)
        self._reads = reads
        self._state_files: set[Path] = set()
        self.kept: set[str] = set()  # finished soups found fresh (not cooked again)

    def inputs(self) -> dict[str, Any]:
        """What the soups of this recipe are cooked from (see :mod:`.freshness`)."""
        return as_json({**self._always, **self._used})

    def finished(self, name: str) -> bool:
        """Whether soup ``name`` is cooked from exactly the current inputs. A stale one is
        unmarked (its soup.json removed, so nothing evaluates it meanwhile) and the log says
        what changed; the caller cooks it again."""
        soup_file = self.soups_dir / name / SOUP_FILE
        if not soup_file.is_file():
            return False
        recorded = recorded_inputs(soup_file)
        reason = "it records no inputs (cooked by an older soup-exp)" if recorded is None else None
        if recorded is not None:
            current = self._current_inputs(recorded)
            if current == recorded:
                self.kept.add(name)
                return True
            reason = describe_change(recorded, current)
        log.info("soup '%s' in %s is stale: %s; cooking it again", name, soup_file.parent, reason)
        soup_file.unlink()
        return False

    def _current_inputs(self, recorded: Mapping[str, Any]) -> dict[str, Any]:
        """The current value of every input ``recorded`` names, and of nothing else (a
        uniform soup is checked without building the held-out evaluator)."""
        reads = self._reads(recorded)
        base = {k: v for k, v in self.inputs().items() if k in self._always}
        return as_json({**base, **{k: reads[k]() for k in recorded if k in reads}})

    def state_file(self, name: str = "state.json") -> Path:
        """Where the recipe may keep state to resume from after preemption; the stage
        removes it once the recipe's soups are written (:meth:`clear_state`)."""
        path = self.soups_dir / self.recipe / name
        self._state_files.add(path)
        return path

    def clear_state(self) -> None:
        """Remove the state files the recipe asked for: its soups are written."""
        for path in self._state_files:
            path.unlink(missing_ok=True)
        self._state_files.clear()
