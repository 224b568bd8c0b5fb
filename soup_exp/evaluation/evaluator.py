"""Evaluate many models on many datasets, one pass over each dataset.

Every model sees each batch while it is on the device, so ten soups cost one read of
the data, not ten. Logit ensembles average what ``ensemble_logits`` says: ``projected``
(each member's logits after the dataset's projection, as the authors' ensemble branch
cached and averaged them) or ``raw`` (average, then project). The two differ on ObjectNet
only (max over mapped classes); column selections (R, A) and the identity commute with
the mean. Evaluation runs at ``precision`` (bf16 autocast on CUDA, or fp32; the paper
preset is fp32, as the authors evaluated). Images come from the
preprocessed cache when one is configured (see :mod:`soup_exp.evaluation.cache`), otherwise
from the JPEGs; both give bit-identical model inputs (see :mod:`soup_exp.evaluation.transforms`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from soup_exp.artifacts.results import with_avg_shifts
from soup_exp.data.base import LabeledImages
from soup_exp.errors import ConfigError
from soup_exp.evaluation.cache import CachedImages, PreprocessedCache
from soup_exp.evaluation.settings import ENSEMBLE_LOGITS, PRECISIONS, EvalSettings, check_choice
from soup_exp.evaluation.sources import Batch, DecodingSource
from soup_exp.evaluation.transforms import split_transform
from soup_exp.utils.runtime import autocast, effective_precision, resolve_device
from soup_exp.vocabulary import HELD_OUT

log = logging.getLogger(__name__)

ModelOrEnsemble = nn.Module | Sequence[nn.Module]
LogitsSink = Callable[[str, str, torch.Tensor, torch.Tensor], None]
# (model, dataset, indices, per-image hits): what each batch's argmax got right
HitsSink = Callable[[str, str, torch.Tensor, torch.Tensor], None]


def _members(value: ModelOrEnsemble) -> list[nn.Module]:
    if isinstance(value, nn.Module):
        return [value]
    members = list(value)
    if not members or not all(isinstance(m, nn.Module) for m in members):
        raise TypeError("an ensemble must be a non-empty sequence of nn.Module")
    return members


class Evaluator:
    """Accuracy of models on a fixed list of datasets under one eval transform.

    ``preprocess`` is the backbone's eval transform (``Backbone.preprocess_val``) or a
    :class:`~soup_exp.evaluation.transforms.SplitTransform`. With ``cache_dir`` set, each
    dataset is decoded once into the preprocessed cache and read from it afterwards.
    Models are moved to ``device`` and run in eval mode (their train/eval mode is restored
    afterwards). ``num_workers``
    DataLoader processes decode JPEGs (first pass, or every pass without a cache);
    ``read_threads`` threads read cached batches ahead of the model.
    """

    def __init__(
        self,
        datasets: Sequence[LabeledImages],
        preprocess: Any,
        *,
        batch_size: int = 256,
        num_workers: int = 0,
        device: str | torch.device = "cpu",
        precision: str = "fp32",
        cache_dir: str | None = None,
        progress: bool = True,
        read_threads: int = 4,
        ensemble_logits: str = "projected",
    ):
        check_choice("eval.ensemble_logits", ensemble_logits, ENSEMBLE_LOGITS)
        check_choice("eval.precision", precision, PRECISIONS)
        self.ensemble_logits = ensemble_logits
        self.datasets: dict[str, LabeledImages] = {}
        for dataset in datasets:
            if dataset.name in self.datasets:
                raise ConfigError(f"dataset {dataset.name!r} is listed twice in the evaluation suite")
            if len(dataset) == 0:
                raise ConfigError(f"dataset {dataset.name!r} has no images (root: {dataset.root or '?'})")
            self.datasets[dataset.name] = dataset
        self.transform = split_transform(preprocess)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.device = device if isinstance(device, torch.device) else resolve_device(str(device))
        self.precision = precision
        self.progress = progress
        self.read_threads = read_threads
        self.cache = (
            PreprocessedCache(cache_dir, num_workers=num_workers, progress=progress)
            if cache_dir
            else None
        )
        self._sources: dict[str, CachedImages | DecodingSource] = {}
        self._targets: dict[str, torch.Tensor] = {}

    @property
    def names(self) -> list[str]:
        return list(self.datasets)

    @property
    def numerics(self) -> str:
        """What accuracies are measured at: ``bf16`` (autocast on CUDA) or ``fp32``."""
        return effective_precision(self.device, self.precision)

    def scores_identity(self, name: str) -> str:
        """What an accuracy on dataset ``name`` depends on besides the model: its images and
        labels, the eval transform and the numerics. A score recorded with another identity
        (other data, split or precision) is not comparable and is measured again."""
        from soup_exp.utils.hashing import stable_hash

        return stable_hash({"data": self.dataset(name).identity(), "transform": self.transform.key,
                            "numerics": self.numerics})

    def dataset(self, name: str) -> LabeledImages:
        try:
            return self.datasets[name]
        except KeyError:
            raise ConfigError(
                f"dataset {name!r} is not in this evaluator's suite {self.names}; add it to eval.datasets"
            ) from None

    def targets(self, name: str) -> torch.Tensor:
        """Targets of ``name`` in dataset order, on the device."""
        if name not in self._targets:
            with torch.inference_mode(False):  # also used by learned soups' training loops
                self._targets[name] = self.dataset(name).targets.to(self.device)
        return self._targets[name]

    # ---- images -------------------------------------------------------------------

    def source(self, name: str) -> CachedImages | DecodingSource:
        """The cache entry of ``name`` (built on first use) or a JPEG-decoding source."""
        if name not in self._sources:
            dataset = self.dataset(name)
            if self.cache is not None:
                self._sources[name] = self.cache.get(dataset, self.transform)
            else:
                self._sources[name] = DecodingSource(
                    dataset, self.transform.to_uint8, num_workers=self.num_workers,
                    pin_memory=self.device.type == "cuda",
                )
        return self._sources[name]

    def _device_batches(
        self, name: str, batch_size: int, order: Sequence[int] | None = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Normalised float images on the device and their dataset indices (CPU)."""
        source = self.source(name)
        batches: Iterator[Batch]
        if isinstance(source, CachedImages):
            batches = source.iter_batches(batch_size, order, pin_memory=self.device.type == "cuda",
                                          readers=self.read_threads)
        else:
            batches = source.iter_batches(batch_size, order)
        for images, indices in batches:
            images = images.to(self.device, non_blocking=True)
            yield self.transform.normalize(images), indices

    def batches(
        self,
        dataset_name: str,
        batch_size: int | None = None,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        order: Sequence[int] | None = None,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """``(images, targets)`` on the device, images normalised, for training-like loops
        over evaluation data (learned soups). Targets index the *projected* logits.
        ``order``: these images only, in this order (a subset, read from the cache as
        needed); else all of them, shuffled by ``generator`` with ``shuffle``."""
        if order is None and shuffle:
            order = torch.randperm(len(self.dataset(dataset_name)), generator=generator).tolist()
        targets = self.targets(dataset_name)
        for images, indices in self._device_batches(dataset_name, batch_size or self.batch_size, order):
            yield images, targets[indices.to(self.device, non_blocking=True)]

    # ---- forward passes -----------------------------------------------------------

    def _forward_pass(
        self, name: str, modules: Sequence[nn.Module], what: str
    ) -> Iterator[tuple[torch.Tensor, list[torch.Tensor]]]:
        """Yield ``(indices, [float32 raw logits per module])`` for every batch of ``name``."""
        self.source(name)  # a first pass builds the cache under its own progress bar
        training = [module.training for module in modules]
        for module in modules:
            module.to(self.device).eval()
        bar = tqdm(
            total=len(self.dataset(name)), desc=f"eval {name} [{what}]", unit="img",
            disable=not self.progress, leave=False,
        )
        try:
            with bar:
                for images, indices in self._device_batches(name, self.batch_size):
                    with torch.inference_mode(), autocast(self.device, self.precision):
                        logits = [module(images).float() for module in modules]
                    yield indices, logits
                    bar.update(len(indices))
        finally:  # periodic evaluation during fine-tuning must not leave the model in eval mode
            for module, was_training in zip(modules, training, strict=True):
                module.train(was_training)

    @torch.inference_mode()
    def _run(
        self, groups: Mapping[str, list[nn.Module]], dataset_names: Sequence[str],
        on_logits: LogitsSink | None = None, on_hits: HitsSink | None = None,
    ) -> dict[str, dict[str, float]]:
        unique = list({id(m): m for members in groups.values() for m in members}.values())
        position = {id(m): i for i, m in enumerate(unique)}
        what = f"{len(groups)} model{'s' if len(groups) != 1 else ''}"
        results: dict[str, dict[str, float]] = {name: {} for name in groups}
        for ds_name in dataset_names:
            dataset, targets = self.dataset(ds_name), self.targets(ds_name)
            correct = {name: torch.zeros((), dtype=torch.long, device=self.device) for name in groups}
            for indices, logits in self._forward_pass(ds_name, unique, what):
                batch_targets = targets[indices.to(self.device, non_blocking=True)]
                for name, members in groups.items():
                    if len(members) == 1:
                        raw = logits[position[id(members[0])]]
                        if on_logits is not None:
                            on_logits(name, ds_name, indices, raw)
                        scores = dataset.project(raw)
                    else:
                        scores = self.ensemble_scores(mean_member_logits(
                            self.member_logits(logits[position[id(m)]], ds_name) for m in members), ds_name)
                    hits = scores.argmax(dim=1) == batch_targets
                    correct[name] += hits.sum()
                    if on_hits is not None:
                        on_hits(name, ds_name, indices, hits)
            for name in groups:
                results[name][ds_name] = correct[name].item() / len(dataset)
        return {name: with_avg_shifts(accuracies) for name, accuracies in results.items()}

    # ---- public API ---------------------------------------------------------------

    def evaluate(
        self, models: Mapping[str, ModelOrEnsemble], datasets: Sequence[str] | None = None,
        on_logits: LogitsSink | None = None, on_hits: HitsSink | None = None,
    ) -> dict[str, dict[str, float]]:
        """``{model: {dataset: accuracy, ..., "avg_shifts": ...}}`` for every model on every
        dataset (or on ``datasets``), in one pass over each dataset. A value that is a
        sequence of modules is a logit ensemble (see :meth:`member_logits`); a module
        shared between entries runs once per batch. ``on_logits(model, dataset, indices,
        raw_logits)`` sees every batch of every single model (see :class:`EnsembleSums`),
        ``on_hits(model, dataset, indices, hits)`` every batch's per-image correctness
        (see :class:`PerImageHits`)."""
        groups = {name: _members(value) for name, value in models.items()}
        names = list(datasets) if datasets is not None else self.names
        for name in names:
            self.dataset(name)
        return self._run(groups, names, on_logits, on_hits)

    def evaluate_ensembles(
        self, members: Mapping[str, Sequence[nn.Module]], datasets: Sequence[str] | None = None
    ) -> dict[str, dict[str, float]]:
        """Logit ensembles: each entry's members' logits averaged as ``ensemble_logits`` says."""
        return self.evaluate({name: list(group) for name, group in members.items()}, datasets)

    def member_logits(self, logits: torch.Tensor, dataset_name: str) -> torch.Tensor:
        """What an ensemble averages of one member's raw logits on ``dataset_name``: the
        projected logits (``ensemble_logits="projected"``, the authors' ensembles) or the
        raw ones. Average these over members, then score with :meth:`ensemble_accuracy`."""
        return self.dataset(dataset_name).project(logits) if self.ensemble_logits == "projected" else logits

    def ensemble_accuracy(self, mean_logits: torch.Tensor, dataset_name: str) -> float:
        """Accuracy of averaged :meth:`member_logits` (rows in dataset order)."""
        hits = self.ensemble_hits(mean_logits, dataset_name)
        return hits.sum().item() / len(hits)

    def ensemble_hits(self, mean_logits: torch.Tensor, dataset_name: str) -> torch.Tensor:
        """Per-image correctness (bool, CPU, dataset order) of averaged :meth:`member_logits`."""
        dataset = self.dataset(dataset_name)
        self._check_rows(mean_logits, dataset_name)
        predictions = self.ensemble_scores(mean_logits.float(), dataset_name).argmax(dim=1).cpu()
        return predictions == dataset.targets

    def ensemble_scores(self, mean_member_logits: torch.Tensor, dataset_name: str) -> torch.Tensor:
        """The per-target scores an ensemble predicts from (argmax) and is calibrated on
        (softmax), from averaged :meth:`member_logits`."""
        if self.ensemble_logits == "projected":
            return mean_member_logits
        return self.dataset(dataset_name).project(mean_member_logits)

    def _check_rows(self, logits: torch.Tensor, dataset_name: str) -> None:
        if logits.ndim != 2 or logits.shape[0] != len(self.dataset(dataset_name)):
            raise ValueError(f"{dataset_name}: expected logits of shape ({len(self.dataset(dataset_name))}, "
                             f"classes), got {tuple(logits.shape)}")

    @torch.inference_mode()
    def logits_many(self, models: Mapping[str, nn.Module], dataset_name: str) -> dict[str, torch.Tensor]:
        """Raw (unprojected) float32 logits of several models in dataset order, on the CPU,
        from one pass over the data."""
        names, modules = list(models), list(models.values())
        chunks: list[list[torch.Tensor]] = [[] for _ in modules]
        what = f"logits of {len(modules)}"
        for _, logits in self._forward_pass(dataset_name, modules, what):
            for chunk, out in zip(chunks, logits, strict=True):
                chunk.append(out)  # stays on the device: a per-batch copy back would sync
        return {name: torch.cat(chunk).cpu() for name, chunk in zip(names, chunks, strict=True)}

    def logits(self, model: nn.Module, dataset_name: str) -> torch.Tensor:
        """Raw (unprojected) float32 logits of ``model`` on ``dataset_name``, dataset order."""
        return self.logits_many({"model": model}, dataset_name)["model"]

    def accuracy_from_logits(self, logits: torch.Tensor, dataset_name: str) -> float:
        """Accuracy of raw logits (rows in dataset order): projection, then argmax."""
        dataset = self.dataset(dataset_name)
        self._check_rows(logits, dataset_name)
        predictions = dataset.project(logits.float()).argmax(dim=1).cpu()
        return (predictions == dataset.targets).sum().item() / len(dataset)

    def heldout_accuracy_fn(
        self, skeleton: nn.Module, dataset_name: str = HELD_OUT
    ) -> Callable[[Mapping[str, torch.Tensor]], float]:
        """``evaluate(state_dict) -> accuracy`` for greedy soups: loads each candidate into
        ``skeleton`` (on the device, strict keys) and scores it on ``dataset_name``; the
        first call fills the cache, every later one reads it."""
        self.dataset(dataset_name)
        skeleton.to(self.device).eval()

        def accuracy(state_dict: Mapping[str, torch.Tensor]) -> float:
            skeleton.load_state_dict(state_dict, strict=True)
            return self._run({"candidate": [skeleton]}, [dataset_name])["candidate"][dataset_name]

        return accuracy


def ensemble_mean(total: torch.Tensor, count: int) -> torch.Tensor:
    """The mean an ensemble predicts from, given the float64 sum of its ``count`` members'
    :meth:`Evaluator.member_logits`: divided, back to float32. The float64 sum is exact for
    float32 values within 2**29 of each other in size, so neither the members' order nor
    how the sum was split (per batch, per member, a running greedy sum) changes a bit. The
    one definition every ensemble path uses: the evaluate stage, the ensemble recipes and
    the analyses."""
    return (total / count).float()


def mean_member_logits(member_logits: Iterable[torch.Tensor]) -> torch.Tensor:
    """Members' logits (as :meth:`Evaluator.member_logits`) averaged by :func:`ensemble_mean`.
    Reads the members one at a time, so they need not be in memory together."""
    total, count = None, 0
    for logits in member_logits:
        total = logits.double() if total is None else total + logits
        count += 1
    if total is None:
        raise ValueError("an ensemble needs at least one member")
    return ensemble_mean(total, count)


class EnsembleSums:
    """Logit ensembles scored from passes that evaluate their members anyway.

    Fed as an ``on_logits`` sink, it adds each member's per-batch logits (as
    :meth:`Evaluator.member_logits`) into a float64 running sum for every ensemble that
    holds the member, so an ensemble of already-evaluated models costs no forward pass of
    its own. Memory: one logit matrix per ensemble and dataset, on the evaluator's device.
    ``members`` maps each ensemble to its member keys; ``key_of`` maps the names models
    are evaluated under to those keys.
    """

    def __init__(self, evaluator: Evaluator, members: Mapping[str, Sequence[str]],
                 key_of: Mapping[str, str]) -> None:
        self.evaluator = evaluator
        self.members = {name: list(keys) for name, keys in members.items()}
        self.key_of = dict(key_of)
        self._holders: dict[str, list[str]] = {}
        for name, keys in self.members.items():
            for key in keys:
                self._holders.setdefault(key, []).append(name)
        self._sums: dict[tuple[str, str], torch.Tensor] = {}
        self._seen: dict[tuple[str, str], set[str]] = {}

    def __call__(self, model: str, dataset: str, indices: torch.Tensor, raw_logits: torch.Tensor) -> None:
        key = self.key_of.get(model)
        if key not in self._holders:
            return
        logits = self.evaluator.member_logits(raw_logits, dataset).double()
        rows = indices.to(logits.device)
        for name in self._holders[key]:
            total = self._sums.get((name, dataset))
            if total is None:
                total = self._sums[name, dataset] = logits.new_zeros(len(self.evaluator.dataset(dataset)),
                                                                     logits.shape[1])
            total.index_add_(0, rows, logits)
            self._seen.setdefault((name, dataset), set()).add(key)

    def complete(self, name: str, datasets: Sequence[str]) -> bool:
        """Whether every member of ``name`` was added on each of ``datasets``."""
        wanted = set(self.members[name])
        return all(self._seen.get((name, dataset), set()) >= wanted for dataset in datasets)

    def accuracies(self, name: str, datasets: Sequence[str]) -> dict[str, float]:
        """The ensemble's accuracy on each of ``datasets`` (all members must be in)."""
        return {dataset: hits.sum().item() / len(hits) for dataset, hits in self.hits(name, datasets).items()}

    def hits(self, name: str, datasets: Sequence[str]) -> dict[str, torch.Tensor]:
        """The ensemble's per-image correctness on each of ``datasets``; its sums are freed."""
        count = len(self.members[name])
        return {dataset: self.evaluator.ensemble_hits(ensemble_mean(self._sums.pop((name, dataset)), count), dataset)
                for dataset in datasets}


class PerImageHits:
    """Every model's per-image correctness, filled from an ``on_hits`` sink.

    Kept on the evaluator's device until asked for (a copy back per batch would
    synchronise the stream): one bool per image, model and dataset."""

    def __init__(self, evaluator: Evaluator) -> None:
        self.evaluator = evaluator
        self._hits: dict[tuple[str, str], torch.Tensor] = {}

    def __call__(self, model: str, dataset: str, indices: torch.Tensor, hits: torch.Tensor) -> None:
        kept = self._hits.get((model, dataset))
        if kept is None:
            kept = self._hits[model, dataset] = hits.new_zeros(len(self.evaluator.dataset(dataset)))
        kept[indices.to(hits.device)] = hits

    def pop(self, model: str) -> dict[str, torch.Tensor]:
        """``{dataset: bool hits on the CPU}`` of ``model``, forgotten here."""
        keys = [key for key in self._hits if key[0] == model]
        return {dataset: self._hits.pop((model, dataset)).cpu() for _, dataset in keys}


def evaluation_suite(settings: EvalSettings) -> list[str]:
    """``eval.datasets`` plus the user's datasets (``data.datasets``), each once."""
    extra = settings.data.get("datasets") or {}
    return list(dict.fromkeys([*settings.datasets, *extra]))


def configured_numerics(settings: EvalSettings) -> str:
    """What :func:`build_evaluator` of ``settings`` will measure at, without building it:
    compare with an ingredient's ``held_out_precision`` to decide whether to re-score it."""
    return effective_precision(resolve_device(settings.device), settings.precision)


def build_evaluator(
    settings: EvalSettings, preprocess: Any, classes: Any, names: Sequence[str] | None = None,
    extra: Sequence[LabeledImages] = (),
) -> Evaluator:
    """The evaluator of a stage's :class:`EvalSettings`: datasets ``names`` (default
    :func:`evaluation_suite`) built by the data registry for the model's class space ``classes``,
    then ``extra`` (datasets built elsewhere, e.g. a fixed subset of the training images)."""
    from soup_exp.data.registry import build_eval_dataset

    names = list(names if names is not None else evaluation_suite(settings))
    datasets = [*(build_eval_dataset(name, settings.data, classes) for name in names), *extra]
    return Evaluator(
        datasets,
        preprocess,
        batch_size=settings.batch_size,
        num_workers=settings.num_workers,
        device=settings.device,
        precision=settings.precision,
        cache_dir=settings.cache_dir,
        progress=settings.progress,
        read_threads=settings.read_threads,
        ensemble_logits=settings.ensemble_logits,
    )
