"""The whole evaluation suite for analyses: held-out, ImageNet, the shifts and the user's
datasets, with logits of saved models cached on disk (one decode of each dataset, one
forward pass of each model); weight-space candidates are evaluated ``models_per_pass`` at
a time."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch

from soup_exp.artifacts.results import with_avg_shifts
from soup_exp.errors import ConfigError
from soup_exp.evaluation.evaluator import mean_member_logits
from soup_exp.soups.ingredients import LazyWeights
from soup_exp.soups.judge import Judge
from soup_exp.vocabulary import AVG_SHIFTS, SHIFTS


class Suite:
    """Accuracies of saved models, ensembles and weight-space candidates on the suite's
    datasets (``names``), through the judge's evaluator and logits cache."""

    def __init__(self, judge: Judge, *, models_per_pass: int, analysis: str,
                 train_evaluators: dict[tuple[int, int], Any]) -> None:
        self.judge = judge
        self.models_per_pass = max(1, models_per_pass)
        self.analysis = analysis  # the analysis it is handed to (for messages)
        self._train_evaluators = train_evaluators  # shared by the stage's analyses

    @property
    def evaluator(self) -> Any:
        return self.judge.evaluator

    @property
    def names(self) -> list[str]:
        """Held-out first, then ImageNet, the shifts and the user's datasets."""
        return list(self.evaluator.names)

    @property
    def shifts(self) -> list[str]:
        return [name for name in SHIFTS if name in self.names]

    def datasets_for(self, metrics: Iterable[str]) -> list[str]:
        """The datasets to evaluate for ``metrics`` (dataset names or ``avg_shifts``)."""
        needed: list[str] = []
        for metric in metrics:
            if metric == AVG_SHIFTS:
                if len(self.shifts) < len(SHIFTS):
                    raise ConfigError(f"analysis {self.analysis}: {AVG_SHIFTS} needs all five shifts in "
                                      f"eval.datasets; the suite is {self.names}")
                needed += self.shifts
            elif metric in self.names:
                needed.append(metric)
            else:
                raise ConfigError(f"analysis {self.analysis}: {metric!r} is not in the evaluation suite "
                                  f"{self.names} (nor {AVG_SHIFTS})")
        return list(dict.fromkeys(needed))

    def accuracies(self, model: LazyWeights, datasets: Iterable[str]) -> dict[str, float]:
        """Accuracy of a saved model on ``datasets`` (plus ``avg_shifts`` when all five are
        there), from its cached logits."""
        result = {name: self.evaluator.accuracy_from_logits(self.judge.logits(model, name), name)
                  for name in datasets}
        return with_avg_shifts(result)

    def ensemble_scores(self, members: Sequence[LazyWeights], dataset: str) -> torch.Tensor:
        """The scores a logit ensemble predicts from, from its members' cached logits."""
        mean = mean_member_logits(self.evaluator.member_logits(self.judge.logits(member, dataset), dataset)
                                  for member in members)
        return self.evaluator.ensemble_scores(mean, dataset)

    def ensemble_accuracies(self, members: Sequence[LazyWeights], datasets: Iterable[str]) -> dict[str, float]:
        result = {}
        for name in datasets:
            predictions = self.ensemble_scores(members, name).argmax(dim=1).cpu()
            result[name] = (predictions == self.evaluator.dataset(name).targets).float().mean().item()
        return with_avg_shifts(result)

    def target_scores(self, model: LazyWeights, dataset: str) -> torch.Tensor:
        """Per-target scores of a saved model on ``dataset`` (projected logits)."""
        return self.evaluator.dataset(dataset).project(self.judge.logits(model, dataset).float())

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
        skeleton = self.judge.skeleton
        models = {}
        for index, (name, state_dict) in enumerate(group):
            model = skeleton if index == 0 else copy.deepcopy(skeleton)
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
        skeleton = self.judge.skeleton
        skeleton.load_state_dict(state_dict, strict=True)
        return {name: evaluator.logits(skeleton, name) for name in datasets}

    def train_subset(self, images: int, seed: int) -> tuple[Any, str]:
        """``(evaluator, dataset name)`` of a fixed, seeded subset of ``images`` training
        images (the training split, held-out excluded), read with the evaluation transform
        and the preprocessed cache like every other dataset."""
        if (images, seed) not in self._train_evaluators:
            from soup_exp.data.base import LabeledImages

            builders, classes = self.judge.builders, self.judge.classes
            samples = builders.train_samples(classes)
            order = torch.randperm(len(samples), generator=torch.Generator().manual_seed(seed))
            chosen = sorted(order[: min(images, len(samples))].tolist())
            dataset = LabeledImages("TrainSubset", [samples[i] for i in chosen], classes.num_classes,
                                    root=f"train:{images}:{seed}")
            evaluator = builders.evaluator(self.judge.preprocess, classes, [], [dataset])
            self._train_evaluators[(images, seed)] = evaluator
        return self._train_evaluators[(images, seed)], "TrainSubset"
