"""Where a stage's config becomes the roles its plugins are handed (pool, judge, store):
the one place that reads the config for them, so the roles themselves never see it."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from soup_exp.analysis.context import AnalysisContext
from soup_exp.analysis.pool import AnalysisPool
from soup_exp.analysis.store import AnalysisStore
from soup_exp.analysis.suite import Suite
from soup_exp.evaluation.settings import EvalSettings
from soup_exp.soups.context import SoupContext
from soup_exp.soups.ingredients import LazyWeights
from soup_exp.soups.judge import EvalBuilders, Judge
from soup_exp.soups.pool import Pool
from soup_exp.soups.settings import SoupSettings
from soup_exp.soups.store import SoupStore, logits_dir
from soup_exp.vocabulary import HELD_OUT

P = TypeVar("P", bound=Pool)


def eval_builders(cfg: Any, settings: Callable[[], EvalSettings]) -> EvalBuilders:
    """How this stage builds its class space, skeleton and evaluators (on first use)."""
    from soup_exp.data.registry import build_train_samples, class_space
    from soup_exp.evaluation.evaluator import build_evaluator
    from soup_exp.models import build_classifier

    return EvalBuilders(
        classes=lambda: class_space(settings().data),
        classifier=lambda classes: build_classifier(cfg.model, classes.num_classes, pretrained=False),
        evaluator=lambda preprocess, classes, names, extra: build_evaluator(settings(), preprocess, classes,
                                                                            names=names, extra=extra),
        train_samples=lambda classes: build_train_samples(settings().data, classes),
    )


def pool_and_judge(cfg: Any, soup: SoupSettings, ingredients: list[LazyWeights], datasets: Sequence[str] = (HELD_OUT,),
                   kind: type[P] = Pool) -> P:
    """The stage's pool, its judge (``pool.judge``) evaluating on ``datasets`` (held-out first)."""
    from soup_exp.evaluation.evaluator import configured_numerics

    evaluation = functools.cache(lambda: EvalSettings.from_config(cfg))  # a uniform soup reads no eval settings
    judge = Judge(eval_builders(cfg, evaluation), seed=soup.seed, logits_dir=logits_dir(soup.soups_dir),
                  datasets=datasets)
    return kind(ingredients, judge=judge, numerics=lambda: configured_numerics(evaluation()),
                soups_dir=soup.soups_dir, zeroshot_dir=soup.zeroshot_dir)


class SoupRoles:
    """The soup stage's pool and judge, and a fresh :class:`SoupContext` for each recipe."""

    def __init__(self, cfg: Any, ingredients: list[LazyWeights], run: Any) -> None:
        soup = SoupSettings.from_config(cfg)
        self.pool = pool_and_judge(cfg, soup, ingredients)
        self.run = run
        self.soups_dir = soup.soups_dir
        self.accumulate_dtype = soup.accumulate_dtype
        self.arithmetic = soup.arithmetic
        self.progress = soup.progress
        self.kernel_device = soup.kernel_device

    def context(self, recipe: str, params: Mapping[str, Any]) -> SoupContext:
        """What recipe ``recipe`` cooks with: the shared pool and judge recording what it
        reads, and its own store."""
        used: dict[str, Any] = {}
        pool = self.pool.recording(used)
        always = {"recipe": recipe, "params": dict(params), "pool": pool.identity,
                  "numerics": {"accumulate_dtype": str(self.accumulate_dtype).removeprefix("torch."),
                               "arithmetic": self.arithmetic}}
        reads = lambda recorded: {**pool.reads(recorded), **pool.judge.reads()}  # noqa: E731
        store = SoupStore(self.soups_dir, recipe, always, used, reads)
        return SoupContext(pool=pool, judge=pool.judge, store=store, run=self.run, recipe=recipe,
                           params=dict(params), accumulate_dtype=self.accumulate_dtype, arithmetic=self.arithmetic,
                           progress=self.progress, kernel_device_name=self.kernel_device)


class AnalysisRoles:
    """The analyze stage's pool and judge (the whole suite), and a fresh
    :class:`AnalysisContext` with its own store for each analysis."""

    def __init__(self, cfg: Any, ingredients: list[LazyWeights], run: Any) -> None:
        from soup_exp.evaluation.evaluator import evaluation_suite

        soup = SoupSettings.from_config(cfg)
        suite = list(dict.fromkeys([HELD_OUT, *evaluation_suite(EvalSettings.from_config(cfg))]))
        self.pool = pool_and_judge(cfg, soup, ingredients, suite, kind=AnalysisPool)
        self.run = run
        self.analysis_dir = Path(cfg.analysis_dir)
        self.models_per_pass = int(cfg.eval.models_per_pass)
        self.accumulate_dtype = soup.accumulate_dtype
        self.arithmetic = soup.arithmetic
        self.progress = soup.progress
        self._train_evaluators: dict[tuple[int, int], Any] = {}

    def context(self, name: str, key: str) -> AnalysisContext:
        """What analysis ``name`` (its numbers depending on ``key``) runs with."""
        store = AnalysisStore(self.analysis_dir / name, key)
        pool = self.pool.for_analysis(name, store.use)
        suite = Suite(pool.judge, models_per_pass=self.models_per_pass, analysis=name,
                      train_evaluators=self._train_evaluators)
        return AnalysisContext(pool=pool, judge=pool.judge, store=store, suite=suite, run=self.run, name=name,
                               accumulate_dtype=self.accumulate_dtype, arithmetic=self.arithmetic,
                               progress=self.progress)
