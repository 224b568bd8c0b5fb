"""What every analysis is handed: the soup stage's context plus the whole evaluation suite.

:class:`AnalysisContext` is a :class:`~soup_exp.soups.context.SoupContext` (pool, scores,
cached held-out logits, ``evaluate``, zero-shot model, skeleton) whose evaluator also
holds ImageNet, the shifts and the user's datasets, with logits of any model cached on
disk (one decode of each dataset, one forward pass of each model); weight-space
candidates (grid points, pairwise or random soups) are evaluated ``eval.models_per_pass``
at a time. It also knows where the running analysis writes and what it has read.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from soup_exp.analysis.settings import analysis_key_settings
from soup_exp.artifacts import SOUP_FILE, WEIGHTS_FILE, SoupRecord, resolve_member, soup_records
from soup_exp.artifacts.analysis import file_stats, read_partial, write_partial
from soup_exp.artifacts.results import with_avg_shifts
from soup_exp.errors import ConfigError
from soup_exp.evaluation.evaluator import mean_member_logits
from soup_exp.evaluation.settings import EvalSettings
from soup_exp.soups.context import SoupContext
from soup_exp.soups.ingredients import Ingredient, SafetensorsSource, resolve_ingredients
from soup_exp.utils.hashing import stable_hash
from soup_exp.vocabulary import AVG_SHIFTS, HELD_OUT, SHIFTS

log = logging.getLogger(__name__)

INIT_CHOICES = ("auto", "zeroshot", "lp")


@dataclass
class SoupEntry:
    """A finished soup (its typed ``soup.json``): weights (weight-space recipes) or members
    (logit ensembles)."""

    soup: SoupRecord
    weights: Ingredient | None = None
    members: list[Ingredient] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.soup.name

    @property
    def kind(self) -> str:
        return str(self.soup.kind or "soup")

    @property
    def recipe(self) -> str:
        return str(self.soup.recipe or "")

    @property
    def label(self) -> str:
        return self.soup.display_label

    @property
    def record(self) -> Mapping[str, Any]:
        return self.soup.json


class AnalysisContext(SoupContext):
    """The pool and the soup stage's tools, the full evaluation suite with cached logits,
    and the running analysis's folder (``out``, ``save_table``, ``partial``)."""

    def __init__(self, cfg: Any, ingredients: list[Ingredient], run: Any) -> None:
        super().__init__(cfg, ingredients, run)
        self.analysis_dir = Path(cfg.analysis_dir)
        self.models_per_pass = max(1, int(cfg.eval.models_per_pass))
        self.name = ""  # the analysis running (set by the stage through begin())
        self.key = ""
        self.outputs: list[Path] = []
        self.inputs: set[str] = set()
        self._train_evaluators: dict[tuple[int, int], Any] = {}

    # ---- the running analysis -----------------------------------------------------------

    def begin(self, name: str, key: str) -> None:
        self.name, self.key = name, key
        self.outputs, self.inputs = [], set()
        self.folder.mkdir(parents=True, exist_ok=True)

    @property
    def folder(self) -> Path:
        return self.analysis_dir / self.name

    def out(self, stem: str) -> Path:
        """Base path (no suffix) of an output of the running analysis."""
        return self.folder / stem

    def register(self, paths: Iterable[Path]) -> list[Path]:
        """Record files the analysis wrote (figures, tables) for its record and W&B."""
        paths = [Path(p) for p in paths]
        self.outputs += [p for p in paths if p not in self.outputs]
        return paths

    def save_table(self, stem: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> Path:
        from soup_exp.reporting.figures import save_data

        return self.register([save_data(columns, rows, self.out(stem))])[0]

    def partial(self) -> dict[str, Any]:
        """Results an interrupted run of this analysis saved with :meth:`save_partial`."""
        return read_partial(self.folder, self.key)

    def save_partial(self, data: Mapping[str, Any]) -> None:
        write_partial(self.folder, self.key, data)

    def key_for(self, target: str, params: Mapping[str, Any]) -> str:
        """What an analysis's numbers depend on: the pool's and zero-shot model's files, the
        model, data and evaluation settings, and the analysis with its parameters."""
        pool = [[ing.name, file_stats([ing.path]) if ing.path else None] for ing in self.ingredients]
        zeroshot = self.settings.zeroshot_dir / WEIGHTS_FILE
        settings = analysis_key_settings(self.cfg.model, EvalSettings.from_config(self.cfg), self.settings)
        return stable_hash({"target": target, "params": params, "pool": pool,
                            "zeroshot": file_stats([zeroshot]), "settings": settings}, length=20)

    def _use(self, *paths: Path | None) -> None:
        self.inputs.update(str(Path(p).resolve()) for p in paths if p is not None)

    # ---- models ---------------------------------------------------------------------------

    def model(self, name: str) -> Ingredient:
        """A soup cooked earlier (named as the soup), an ingredient, or ``best_individual``."""
        soup_dir = self.soups_dir / name
        if (soup_dir / SOUP_FILE).is_file() and (soup_dir / WEIGHTS_FILE).is_file():
            self._use(soup_dir / SOUP_FILE, soup_dir / WEIGHTS_FILE)
            return _weights_of(SoupRecord.read(soup_dir))
        return super().model(name)

    def soups(self) -> list[SoupEntry]:
        """Every finished soup and ensemble in ``soups_dir``, in name order."""
        entries = []
        for soup in soup_records(self.soups_dir):
            self._use(soup.directory / SOUP_FILE, soup.directory / WEIGHTS_FILE)
            if soup.is_ensemble:
                entries.append(SoupEntry(soup, members=[self._member(m, soup) for m in soup.members or ()]))
            elif (soup.directory / WEIGHTS_FILE).is_file():
                entries.append(SoupEntry(soup, weights=_weights_of(soup)))
        return entries

    def _member(self, member: Any, soup: SoupRecord) -> Ingredient:
        """An ensemble member, by the reader's rules (:func:`~soup_exp.artifacts.resolve_member`):
        the pool's ingredient when it names one, else the file the soup recorded."""
        pool = {ing.path: ing for ing in self.ingredients if ing.path is not None}
        path = resolve_member(member, soup, {ing.name: path for path, ing in pool.items()})
        if path in pool:
            return pool[path]
        self._use(path)
        return resolve_ingredients(path, kinds=None)[0]

    def initialisation(self, which: str = "auto") -> Ingredient:
        """The model fine-tuning started from: ``lp`` (the LP init the pool's fine-tunes
        name in ``hparams.init_from``, or its one ``lp`` ingredient), ``zeroshot``,
        ``auto`` (the LP init if there is one, else the zero-shot model) or a model name."""
        if which not in INIT_CHOICES:
            return self.model(which)
        lp = self._lp_init() if which in ("auto", "lp") else None
        if lp is not None:
            return lp
        if which in ("auto", "zeroshot") and self.zeroshot is not None:
            self._use(self.zeroshot.path)
            return self.zeroshot
        wanted = (self.base_needs(which) if which != "auto"
                  else f"an LP init or a zero-shot model in {self.cfg.zeroshot_dir}")
        raise ConfigError(f"analysis {self.name}: the initialisation '{which}' needs {wanted}; "
                          "name a model instead (an ingredient or soup name)")

    def hparams(self, ing: Ingredient) -> dict[str, Any]:
        """The hyperparameters a sweep drew for ``ing`` (``sweep.drawn``), else its ``hparams``."""
        drawn = (ing.info.get("sweep") or {}).get("drawn")
        return dict(drawn if isinstance(drawn, Mapping) else ing.info.get("hparams") or {})

    # ---- evaluation -------------------------------------------------------------------------

    @cached_property
    def _evaluator(self):
        """Held-out first, then the evaluation suite (the soup context's judge has held-out only)."""
        from soup_exp.evaluation.evaluator import build_evaluator, evaluation_suite

        settings = EvalSettings.from_config(self.cfg)
        names = list(dict.fromkeys([HELD_OUT, *evaluation_suite(settings)]))
        return build_evaluator(settings, self._classifier[1].preprocess_val, self.classes, names=names)

    @property
    def suite(self) -> list[str]:
        """Held-out first, then ImageNet, the shifts and the user's datasets."""
        return list(self.evaluator.names)

    @property
    def shifts(self) -> list[str]:
        return [name for name in SHIFTS if name in self.suite]

    def datasets_for(self, metrics: Iterable[str]) -> list[str]:
        """The datasets to evaluate for ``metrics`` (dataset names or ``avg_shifts``)."""
        needed: list[str] = []
        for metric in metrics:
            if metric == AVG_SHIFTS:
                if len(self.shifts) < len(SHIFTS):
                    raise ConfigError(f"analysis {self.name}: {AVG_SHIFTS} needs all five shifts in "
                                      f"eval.datasets; the suite is {self.suite}")
                needed += self.shifts
            elif metric in self.suite:
                needed.append(metric)
            else:
                raise ConfigError(f"analysis {self.name}: {metric!r} is not in the evaluation suite "
                                  f"{self.suite} (nor {AVG_SHIFTS})")
        return list(dict.fromkeys(needed))

    def accuracies(self, model: Ingredient, datasets: Iterable[str]) -> dict[str, float]:
        """Accuracy of a saved model on ``datasets`` (plus ``avg_shifts`` when all five are
        there), from its cached logits."""
        result = {name: self.evaluator.accuracy_from_logits(self.logits(model, name), name) for name in datasets}
        return with_avg_shifts(result)

    def ensemble_scores(self, members: Sequence[Ingredient], dataset: str) -> torch.Tensor:
        """The scores a logit ensemble predicts from, from its members' cached logits."""
        mean = mean_member_logits(self.evaluator.member_logits(self.logits(member, dataset), dataset)
                                  for member in members)
        return self.evaluator.ensemble_scores(mean, dataset)

    def ensemble_accuracies(self, members: Sequence[Ingredient], datasets: Iterable[str]) -> dict[str, float]:
        result = {}
        for name in datasets:
            predictions = self.ensemble_scores(members, name).argmax(dim=1).cpu()
            result[name] = (predictions == self.evaluator.dataset(name).targets).float().mean().item()
        return with_avg_shifts(result)

    def target_scores(self, model: Ingredient, dataset: str) -> torch.Tensor:
        """Per-target scores of a saved model on ``dataset`` (projected logits)."""
        return self.evaluator.dataset(dataset).project(self.logits(model, dataset).float())

    def evaluate_weights(
        self, candidates: Iterable[tuple[str, Mapping[str, torch.Tensor]]], datasets: Sequence[str]
    ) -> Iterator[tuple[str, dict[str, float]]]:
        """Accuracies of weight-space candidates (``(name, state_dict)``, consumed lazily),
        ``models_per_pass`` at a time: one read of each dataset per group."""
        group: list[tuple[str, Mapping[str, torch.Tensor]]] = []
        for item in candidates:
            group.append(item)
            if len(group) == self.models_per_pass:
                yield from self._evaluate_group(group, datasets)
                group = []
        if group:
            yield from self._evaluate_group(group, datasets)

    def _evaluate_group(self, group, datasets: Sequence[str]) -> Iterator[tuple[str, dict[str, float]]]:
        models = {}
        for index, (name, state_dict) in enumerate(group):
            model = self.skeleton if index == 0 else copy.deepcopy(self.skeleton)
            model.load_state_dict(state_dict, strict=True)
            models[name] = model
        results = self.evaluator.evaluate(models, list(datasets))
        del models
        for name, _ in group:
            yield name, results[name]

    def weights_logits(self, state_dict: Mapping[str, torch.Tensor], datasets: Sequence[str],
                       evaluator: Any = None) -> dict[str, torch.Tensor]:
        """Raw logits of a candidate on each of ``datasets`` (not cached)."""
        evaluator = evaluator or self.evaluator
        self.skeleton.load_state_dict(state_dict, strict=True)
        return {name: evaluator.logits(self.skeleton, name) for name in datasets}

    def train_subset(self, images: int, seed: int) -> tuple[Any, str]:
        """``(evaluator, dataset name)`` of a fixed, seeded subset of ``images`` training
        images (the training split, held-out excluded), read with the evaluation transform
        and the preprocessed cache like every other dataset."""
        if (images, seed) not in self._train_evaluators:
            from soup_exp.data.base import LabeledImages
            from soup_exp.data.registry import build_train_samples
            from soup_exp.evaluation.evaluator import build_evaluator

            samples = build_train_samples(self.cfg.data, self.classes)
            order = torch.randperm(len(samples), generator=torch.Generator().manual_seed(seed))
            chosen = sorted(order[: min(images, len(samples))].tolist())
            dataset = LabeledImages("TrainSubset", [samples[i] for i in chosen], self.classes.num_classes,
                                    root=f"train:{images}:{seed}")
            evaluator = build_evaluator(EvalSettings.from_config(self.cfg), self._classifier[1].preprocess_val,
                                        self.classes, names=[], extra=[dataset])
            self._train_evaluators[(images, seed)] = evaluator
        return self._train_evaluators[(images, seed)], "TrainSubset"


def _weights_of(soup: SoupRecord) -> Ingredient:
    path = soup.directory / WEIGHTS_FILE
    return Ingredient(soup.name, SafetensorsSource(path), path=path, info=dict(soup.json))


