"""The pool a recipe or analysis works on: ingredients, their held-out scores, the models
around them (the zero-shot model, the LP init, soups cooked earlier).

What a plugin reads besides the ingredients is recorded in ``used`` (the inputs of its
soups, :mod:`.freshness`), and the files it reads through ``use`` (an analysis's inputs).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from soup_exp.artifacts import WEIGHTS_FILE, SoupRecord, is_finished_run, is_finished_soup
from soup_exp.errors import ConfigError
from soup_exp.soups.freshness import pool_identity, weights_identity
from soup_exp.soups.greedy_rule import greedy_order
from soup_exp.soups.ingredients import LazyWeights, held_out_score, resolve_ingredients
from soup_exp.soups.judge import Judge
from soup_exp.soups.views import SharedCaches

log = logging.getLogger(__name__)

BASE_NEEDS = {"lp": "an LP init (an `lp` ingredient, or hparams.init_from of the fine-tunes)",
              "zeroshot": "a zero-shot model in {zeroshot_dir}"}


def _ignore(*paths: Path | None) -> None:
    """Files read besides the pool are not inputs of a soup."""


class Pool(SharedCaches):
    """``ingredients``, ``names``, ``scores`` (held-out, at the judge's numerics),
    ``best_index``, ``base("lp" | "zeroshot")``, ``zeroshot`` and ``model(name)``."""

    def __init__(self, ingredients: list[LazyWeights], *, judge: Judge, numerics: Callable[[], str], soups_dir: Path,
                 zeroshot_dir: Path, used: dict[str, Any] | None = None,
                 use: Callable[..., None] = _ignore) -> None:
        self.ingredients = ingredients
        self.names = [ing.name for ing in ingredients]
        self.identity = pool_identity(ingredients)  # the pool does not change while the stage runs
        self.judge = judge
        self._numerics = numerics  # what the judge measures at (asked only when scores are)
        self.soups_dir = Path(soups_dir)
        self.zeroshot_dir = Path(zeroshot_dir)
        self._used = {} if used is None else used
        self._use = use
        self._cache: dict[str, Any] = {}

    def recording(self, used: dict[str, Any], use: Callable[..., None] = _ignore) -> Pool:
        """This pool (its scores and models shared) recording what a plugin reads."""
        view = self._view()
        view._used, view._use = used, use
        view.judge = self.judge.recording(used)
        return view

    # ---- the models around the pool ---------------------------------------------------------

    @property
    def zeroshot(self) -> LazyWeights | None:
        """The zero-shot model (WiSE-FT and Model Stock start from it), or None."""
        self._used["zeroshot"] = self._zeroshot_identity()
        return self._zeroshot

    def _zeroshot_identity(self) -> list[int] | None:
        return weights_identity(self._zeroshot.path if self._zeroshot is not None else None)

    @property
    def _zeroshot(self) -> LazyWeights | None:
        def find() -> LazyWeights | None:
            if not is_finished_run(self.zeroshot_dir):
                return None
            return resolve_ingredients(self.zeroshot_dir, kinds=None)[0]
        return self._memo("zeroshot", find)

    def base(self, which: str) -> LazyWeights | None:
        """The model a task-vector recipe starts from: ``lp`` (the LP init the pool's
        fine-tunes started from) or ``zeroshot``; None when there is none."""
        if which == "zeroshot":
            return self.zeroshot
        if which != "lp":
            raise ConfigError(f"base {which!r}: expected one of {', '.join(BASE_NEEDS)}")
        lp = self._lp_init()
        self._used.setdefault("base", {})["lp"] = weights_identity(lp.path if lp is not None else None)
        return lp

    def base_needs(self, which: str) -> str:
        """What :meth:`base` needs to find ``which``, for the message when it is not there."""
        return BASE_NEEDS[which].format(zeroshot_dir=self.zeroshot_dir)

    def _lp_init(self) -> LazyWeights | None:
        """The pool's ingredient the fine-tunes started from: at their recorded path, or (a
        moved or copied experiment) of their recorded init's name; else that path outside."""
        tuned = [ing for ing in self.ingredients if ing.info.get("kind") == "finetune"]
        sources = {str((ing.info.get("hparams") or {}).get("init_from")) for ing in tuned} - {"None"}
        if len(sources) == 1:
            source = Path(sources.pop())
            names = {_init_name(ing) for ing in tuned}
            for ing in self.ingredients:
                if ing.path is not None and ing.path.parent.resolve() == source.resolve():
                    return ing
            for ing in self.ingredients:
                if names == {ing.name}:
                    return ing
            if is_finished_run(source):
                self._use(source / WEIGHTS_FILE)
                return resolve_ingredients(source, kinds=None)[0]
        lps = [ing for ing in self.ingredients if ing.info.get("kind") == "lp"]
        return lps[0] if len(lps) == 1 else None

    def model(self, name: str) -> LazyWeights:
        """A weight-space soup cooked earlier, an ingredient, or ``best_individual``."""
        if name == "best_individual":
            return self.ingredients[self.best_index]
        soup_dir = self.soups_dir / name
        if is_finished_soup(soup_dir) and (soup_dir / WEIGHTS_FILE).is_file():
            self._used.setdefault("models", {})[name] = self._soup_identity(name)
            return LazyWeights.of_soup(SoupRecord.read(soup_dir))
        if name in self.names:
            return self.ingredients[self.names.index(name)]
        raise ConfigError(
            f"no model named {name!r}: it is neither a weight-space soup in {self.soups_dir} nor an "
            f"ingredient ({', '.join(self.names)}); list the recipe that makes it first"
        )

    def _soup_identity(self, name: str) -> list[int] | None:
        weights = self.soups_dir / name / WEIGHTS_FILE
        return weights_identity(weights) if is_finished_soup(weights.parent) else None

    def hparams(self, ing: LazyWeights) -> dict[str, Any]:
        """The hyperparameters a sweep drew for ``ing`` (``sweep.drawn``), else its ``hparams``."""
        drawn = (ing.info.get("sweep") or {}).get("drawn")
        return dict(drawn if isinstance(drawn, Mapping) else ing.info.get("hparams") or {})

    # ---- scores -------------------------------------------------------------------------------

    @property
    def scores(self) -> list[float]:
        """Held-out accuracy of each ingredient on this held-out data at the numerics
        candidates are scored at: its ingredient.json when measured alike, else evaluated
        once (cached logits)."""
        self._used["scores"] = self._scores
        return self._scores

    @property
    def _scores(self) -> list[float]:
        return self._memo("scores", self._measure_scores)

    def _measure_scores(self) -> list[float]:
        numerics, data = self._numerics(), self.judge.held_out_identity

        def measure(ing: LazyWeights) -> float:
            return self.judge.logits_accuracy(self.judge.heldout_logits(ing))
        return [held_out_score(ing, measure, precision=numerics, data=data) for ing in self.ingredients]

    @property
    def best_index(self) -> int:
        """The ingredient with the best held-out accuracy (ties as the greedy order breaks them)."""
        return greedy_order(self.names, self.scores)[0]

    def reads(self, recorded: Mapping[str, Any]) -> dict[str, Callable[[], Any]]:
        """The current value of each input this pool records (for :mod:`.freshness`)."""
        return {
            "zeroshot": self._zeroshot_identity,
            "scores": lambda: self._scores,
            "models": lambda: {name: self._soup_identity(name) for name in recorded["models"]},
            "base": lambda: {"lp": weights_identity(lp.path if (lp := self._lp_init()) is not None else None)},
        }


def _init_name(ing: LazyWeights) -> Any:
    """The name a fine-tune recorded of the ingredient it started from (``metrics.init.name``)."""
    init = (ing.info.get("metrics") or {}).get("init")
    return init.get("name") if isinstance(init, Mapping) else None
