"""Held-out evaluation: how a recipe judges a candidate soup, with a logits cache on disk.

The class space, the skeleton model and the evaluator are built on first use (a recipe that
only averages weights never loads a dataset), by the builders the stage hands in; one
judge's views (:meth:`Judge.recording`) share them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from soup_exp.soups.cost import HELD_OUT_PASSES
from soup_exp.soups.ingredients import LazyWeights
from soup_exp.soups.views import SharedCaches
from soup_exp.utils.hashing import file_stamp, stable_hash
from soup_exp.vocabulary import HELD_OUT


@dataclass(frozen=True)
class EvalBuilders:
    """How the stage's config builds what evaluation needs (the judge never sees the config)."""

    classes: Callable[[], Any]
    classifier: Callable[[Any], tuple[torch.nn.Module, Any]]  # class space -> (skeleton, backbone)
    evaluator: Callable[..., Any]  # (preprocess, classes, names, extra) -> Evaluator
    train_samples: Callable[[Any], list] | None = None  # class space -> training samples


class Judge(SharedCaches):
    """Held-out accuracy of candidates (``evaluate``, ``candidate_buffer``), raw logits of saved
    models cached on disk, and ensembles scored as the evaluate stage scores them. Every run
    over the held-out set (a candidate scored, logits computed, a training epoch) counts
    in ``HELD_OUT_PASSES`` (a recipe's ``cost``); logits read from the cache do not."""

    def __init__(self, builders: EvalBuilders, *, seed: int, logits_dir: Path,
                 datasets: Sequence[str] = (HELD_OUT,), used: dict[str, Any] | None = None) -> None:
        self.builders = builders
        self.seed = seed
        self.logits_dir = Path(logits_dir)  # shared by the soup and analyze stages
        self.datasets = list(datasets)
        self._used = {} if used is None else used
        self._cache: dict[str, Any] = {}

    def recording(self, used: dict[str, Any]) -> Judge:
        """This judge (its evaluator and caches shared) recording what a plugin reads in ``used``."""
        view = self._view()
        view._used = used
        return view

    @property
    def classes(self) -> Any:
        return self._memo("classes", self.builders.classes)

    @property
    def _classifier(self) -> tuple[torch.nn.Module, Any]:
        return self._memo("classifier", lambda: self.builders.classifier(self.classes))

    @property
    def preprocess(self) -> Any:
        """The evaluation transform of the model's backbone."""
        return self._classifier[1].preprocess_val

    @property
    def skeleton(self) -> torch.nn.Module:
        """The model that candidate state dicts are loaded into (on the evaluation device)."""
        return self._classifier[0]

    @property
    def evaluator(self) -> Any:
        """The evaluator; a soup judged with it depends on the held-out data."""
        self._used["held_out"] = self.held_out_identity
        return self._evaluator

    @property
    def _evaluator(self) -> Any:
        return self._memo("evaluator", lambda: self.builders.evaluator(
            self.preprocess, self.classes, self.datasets, ()))

    @property
    def held_out_identity(self) -> str:
        """The held-out images and labels, the eval transform and the numerics scores are
        measured at: held-out accuracies recorded elsewhere are reused only when it matches."""
        return self._memo("held_out_identity", lambda: self._evaluator.scores_identity(HELD_OUT))

    @property
    def device(self) -> torch.device:
        return self.evaluator.device

    @property
    def _heldout_accuracy(self) -> Callable[[Mapping[str, torch.Tensor]], float]:
        return self._memo("heldout_accuracy", lambda: self.evaluator.heldout_accuracy_fn(self.skeleton, HELD_OUT))

    def candidate_buffer(self) -> dict[str, torch.Tensor]:
        """The evaluation model's own tensors: a candidate written into them is scored
        without another copy of the model (see ``greedy_soup(candidate_buffer=...)``)."""
        self._heldout_accuracy  # noqa: B018 - moves the skeleton to the evaluation device first
        return self.skeleton.state_dict()

    def evaluate(self, state_dict: Mapping[str, torch.Tensor]) -> float:
        """Held-out accuracy of a candidate soup (the skeleton is reused, not copied)."""
        HELD_OUT_PASSES.add()
        return float(self._heldout_accuracy(state_dict))

    def heldout_logits(self, model: LazyWeights) -> torch.Tensor:
        """Raw held-out logits of ``model``, computed once and cached on disk."""
        return self.logits(model, HELD_OUT)

    def logits(self, model: LazyWeights, dataset: str) -> torch.Tensor:
        """Raw logits of ``model`` (an ingredient, the zero-shot model, a soup) on ``dataset``
        in dataset order; cached on disk by weights file, dataset and numerics."""
        from soup_exp.artifacts import read_weights
        from soup_exp.utils.io import atomic_save_safetensors

        path = None
        if model.path is not None:
            path = self.logits_dir / dataset / f"{model.name}-{self._weights_key(model, dataset)}.safetensors"
            if path.is_file():
                return read_weights(path)["logits"]
        self.skeleton.load_state_dict(model.state_dict(), strict=True)
        if dataset == HELD_OUT:
            HELD_OUT_PASSES.add()
        logits = self.evaluator.logits(self.skeleton, dataset)
        if path is not None:
            atomic_save_safetensors({"logits": logits}, path)
        return logits

    def logits_accuracy(self, logits: torch.Tensor) -> float:
        """Held-out accuracy of raw logits (rows in held-out order)."""
        return self.evaluator.accuracy_from_logits(logits, HELD_OUT)

    def heldout_member_logits(self, model: LazyWeights) -> torch.Tensor:
        """What an ensemble averages of ``model`` on held-out, as the evaluate stage does
        (``eval.ensemble_logits``)."""
        return self.evaluator.member_logits(self.heldout_logits(model), HELD_OUT)

    def ensemble_accuracy(self, mean_member_logits: torch.Tensor) -> float:
        """Held-out accuracy of an ensemble from its averaged :meth:`heldout_member_logits`."""
        return self.evaluator.ensemble_accuracy(mean_member_logits, HELD_OUT)

    def recorded_seed(self) -> int:
        """``seed``, recorded as an input of the soup: a statistic cached from a seeded pass
        (:mod:`.statistics`) depends on it even when no pass runs."""
        self._used["seed"] = self.seed
        return self.seed

    def heldout_batches(self, batch_size: int, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Shuffled held-out ``(images, targets)`` on the device; the order is seeded by
        ``seed`` and epoch (so the seed is an input of the soup)."""
        self._used["seed"] = self.seed
        HELD_OUT_PASSES.add()
        generator = torch.Generator().manual_seed(self.seed * 1000 + epoch)
        return self.evaluator.batches(HELD_OUT, batch_size, shuffle=True, generator=generator)

    def _weights_key(self, ing: LazyWeights, dataset: str) -> str:
        size, mtime = file_stamp(ing.path) if ing.path is not None else (None, None)
        return stable_hash({"path": str(ing.path), "size": size, "mtime": mtime,
                            "data": self.evaluator.dataset(dataset).identity(),
                            "transform": self.evaluator.transform.key,
                            "precision": self.evaluator.precision})

    def reads(self) -> dict[str, Callable[[], Any]]:
        """The current value of each input this judge records (for :mod:`.freshness`)."""
        return {"held_out": lambda: self.held_out_identity, "seed": lambda: self.seed}
