"""Held-out optimism audit: how much of a selected soup's held-out gain is the selection
fitting the held-out images themselves.

Greedy and learned soups are chosen on held-out, so their held-out gain over the best
individual is an in-sample number. Here the selection is cross-fitted: the held-out images
(a class-stratified subsample of each of ``sizes`` images per class) are dealt into
``folds`` class-stratified folds, and for each fold the soup is selected on the other folds
alone (the best individual, the greedy rule's ranking and every accept or reject, the
learned soup's training batches) and then scored on the fold it never saw. The optimism gap
is the in-sample gain minus that out-of-sample gain; each fold's soup and best individual
are also scored on the test sets (``metrics``), and the soup selected on the whole
subsample gives the usual held-out gain beside its test gain.

Each candidate is evaluated once, on the whole held-out set: its per-image correctness,
kept by its ingredient set (or learned run), gives its accuracy on any folds of any size.
"""

from __future__ import annotations

import base64
import logging
import statistics
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import numpy as np
import torch

from soup_exp.analysis.context import AnalysisContext
from soup_exp.artifacts.results import with_avg_shifts
from soup_exp.errors import ConfigError
from soup_exp.soups.greedy_rule import greedy_order, run_greedy_rule
from soup_exp.soups.learned import learned_soup
from soup_exp.soups.uniform import uniform_soup
from soup_exp.utils.checks import Range
from soup_exp.vocabulary import AVG_SHIFTS, HELD_OUT, IMAGENET

log = logging.getLogger(__name__)

Method = Literal["greedy", "learned"]
FULL = "all"  # the fold label of a selection on the whole subsample (nothing left out)


# ---- splits ---------------------------------------------------------------------------------------


def class_orders(targets: torch.Tensor, seed: int) -> dict[int, list[int]]:
    """Each class's held-out images in a seeded random order. A size's subsample is the first
    images of each class, so a larger size holds every smaller one."""
    generator = torch.Generator().manual_seed(seed)
    orders = {}
    for cls in sorted(set(targets.tolist())):
        members = (targets == cls).nonzero().flatten()
        orders[cls] = members[torch.randperm(len(members), generator=generator)].tolist()
    return orders


def fold_of_images(orders: Mapping[int, Sequence[int]], per_class: int, folds: int, n: int) -> torch.Tensor:
    """The fold of each held-out image in the ``per_class`` subsample, -1 outside it. Images
    are dealt round robin class after class with one counter, so each class spreads evenly
    over the folds and fold sizes differ by one image at most."""
    fold = torch.full((n,), -1, dtype=torch.long)
    position = 0
    for cls in sorted(orders):
        for index in orders[cls][:per_class]:
            fold[index] = position % folds
            position += 1
    return fold


@dataclass(frozen=True)
class Split:
    """The images a soup is selected on and those it is scored on out of sample (none for
    the selection on the whole subsample), as masks over held-out."""

    per_class: int
    fold: int | str
    selection: torch.Tensor
    left_out: torch.Tensor

    @property
    def key(self) -> str:
        return f"{self.per_class}:{self.fold}"


def splits(fold: torch.Tensor, per_class: int, folds: int) -> list[Split]:
    """The ``folds`` cross-fitting splits of one subsample, then its whole-subsample selection."""
    inside = fold >= 0
    result = [Split(per_class, f + 1, inside & (fold != f), fold == f) for f in range(folds)]
    return [*result, Split(per_class, FULL, inside, torch.zeros_like(inside))]


def clamp_sizes(sizes: Sequence[int], orders: Mapping[int, Sequence[int]], folds: int) -> list[tuple[int, int]]:
    """``(requested, used)`` images per class: a size above the largest class is clamped to it
    (logged), one that would leave a fold empty is an error, repeats are dropped."""
    largest = max(len(v) for v in orders.values())
    chosen: list[tuple[int, int]] = []
    for size in sizes:
        used = min(size, largest)
        if used < size:
            log.warning("optimism: %d images per class requested, held-out has at most %d per class; "
                        "using %d (all of held-out)", size, largest, used)
        total = sum(min(used, len(v)) for v in orders.values())
        if total < folds:
            raise ConfigError(f"analyses.optimism.sizes: {size} images per class give {total} held-out images, "
                              f"fewer than folds={folds}")
        if used not in [u for _, u in chosen]:
            chosen.append((size, used))
    return chosen


def accuracy_on(correct: torch.Tensor, mask: torch.Tensor) -> float:
    """Accuracy on the masked images, counted as the evaluator counts (exact on the whole set)."""
    return int(correct[mask].sum()) / int(mask.sum())


# ---- per-image correctness ---------------------------------------------------------------------------


def pack(correct: torch.Tensor) -> str:
    return base64.b64encode(np.packbits(correct.numpy().astype(np.uint8)).tobytes()).decode("ascii")


def unpack(text: str, n: int) -> torch.Tensor:
    bits = np.unpackbits(np.frombuffer(base64.b64decode(text), dtype=np.uint8))[:n]
    return torch.from_numpy(bits.astype(bool))


class HeldOutCorrectness:
    """Which held-out images each candidate gets right, from one evaluation of it on the
    whole held-out set; ingredients come from their cached logits, soups are evaluated once
    and kept (packed bits) in ``stored``, which ``save`` writes for a resumed run."""

    def __init__(self, ctx: AnalysisContext, stored: dict[str, str], save: Callable[[], None]) -> None:
        self.ctx = ctx
        self.dataset = ctx.suite.evaluator.dataset(HELD_OUT)
        self.targets = self.dataset.targets
        self.stored = stored
        self.save = save
        self._ingredients: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.targets)

    def from_logits(self, logits: torch.Tensor) -> torch.Tensor:
        return self.dataset.project(logits.float()).argmax(dim=1).cpu() == self.targets

    def ingredient(self, index: int) -> torch.Tensor:
        if index not in self._ingredients:
            self._ingredients[index] = self.from_logits(self.ctx.judge.heldout_logits(self.ctx.pool.ingredients[index]))
        return self._ingredients[index]

    def uniform(self, members: Sequence[int]) -> torch.Tensor:
        """The uniform soup of ``members`` (an ingredient alone is itself)."""
        members = tuple(sorted(members))
        if len(members) == 1:
            return self.ingredient(members[0])
        key = set_key(self.ctx.pool.names, members)
        if key not in self.stored:
            pool = self.ctx.pool.ingredients
            state_dict = uniform_soup([pool[i] for i in members], accumulate_dtype=self.ctx.accumulate_dtype,
                                      arithmetic=self.ctx.arithmetic)
            self.record(key, self.ctx.suite.weights_logits(state_dict, [HELD_OUT])[HELD_OUT])
        return unpack(self.stored[key], len(self))

    def record(self, key: str, logits: torch.Tensor) -> None:
        self.stored[key] = pack(self.from_logits(logits))
        self.save()

    def get(self, key: str) -> torch.Tensor:
        return unpack(self.stored[key], len(self))


def set_key(names: Sequence[str], members: Sequence[int]) -> str:
    return "+".join(names[i] for i in sorted(members))


# ---- selections --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Selected:
    """What one selection chose on its split: the soup (``key`` of its correctness and test
    accuracies), its best individual, and their accuracies on the selection images."""

    method: str
    split: Split
    soup: str
    members: list[str]
    best: int
    soup_in_sample: float
    best_in_sample: float


def best_individual(correct: HeldOutCorrectness, names: Sequence[str], selection: torch.Tensor) -> tuple[int, list[float]]:
    """The ingredient the selection images rank first (ties as the greedy order breaks them), and every score."""
    scores = [accuracy_on(correct.ingredient(i), selection) for i in range(len(names))]
    return greedy_order(names, scores)[0], scores


def select_greedy(correct: HeldOutCorrectness, names: Sequence[str], split: Split, tolerance: float) -> Selected:
    """The paper's greedy rule on the selection images only: ranking, start and every decision."""
    best, scores = best_individual(correct, names, split.selection)
    members = [best]

    def try_candidate(index: int) -> float:
        return accuracy_on(correct.uniform([*members, index]), split.selection)

    final = run_greedy_rule(names, scores, try_candidate, members.append, tolerance=tolerance)
    chosen = sorted(final["chosen"])
    return Selected("greedy", split, set_key(names, chosen), [names[i] for i in chosen], best,
                    float(final["best"]), scores[best])


class LearnedRuns:
    """Per-model learned soups trained on a split's selection images only, each evaluated
    once on held-out and the test sets. Each epoch streams the selection images, shuffled
    by ``seed``, from the evaluator (its preprocessed cache): nothing is held in memory."""

    def __init__(self, ctx: AnalysisContext, correct: HeldOutCorrectness, tests: dict[str, dict[str, float]],
                 datasets: Sequence[str], *, epochs: int, lr: float, batch_size: int, seed: int) -> None:
        self.ctx, self.correct, self.tests, self.datasets = ctx, correct, tests, list(datasets)
        self.epochs, self.lr, self.batch_size, self.seed = epochs, lr, batch_size, seed

    def batches(self, selection: torch.Tensor, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        indices = selection.nonzero().flatten()
        generator = torch.Generator().manual_seed(self.seed * 1000 + epoch)
        order = indices[torch.randperm(len(indices), generator=generator)]
        return self.ctx.suite.evaluator.batches(HELD_OUT, self.batch_size, order=order.tolist())

    def select(self, split: Split, names: Sequence[str], coefficients: dict[str, Any]) -> Selected:
        key = f"learned:{split.key}"
        if key not in self.correct.stored or key not in self.tests:
            result = learned_soup(self.ctx.pool.ingredients, self.ctx.judge.skeleton,
                                  lambda epoch: self.batches(split.selection, epoch), mode="per_model",
                                  epochs=self.epochs, lr=self.lr, device=self.ctx.judge.device)
            logits = self.ctx.suite.weights_logits(result.state_dict, [HELD_OUT, *self.datasets])
            evaluator = self.ctx.suite.evaluator
            self.tests[key] = with_avg_shifts({name: evaluator.accuracy_from_logits(logits[name], name)
                                               for name in self.datasets})
            coefficients[key] = {"coefficients": result.coefficients, "beta": result.beta}
            self.correct.record(key, logits[HELD_OUT])
        best, scores = best_individual(self.correct, names, split.selection)
        return Selected("learned", split, key, list(names), best,
                        accuracy_on(self.correct.get(key), split.selection), scores[best])


# ---- the analysis ------------------------------------------------------------------------------------


def default_metrics(suite_names: Sequence[str], shifts: Sequence[str]) -> list[str]:
    """ImageNet and the shifts' average, those the suite has."""
    from soup_exp.vocabulary import SHIFTS

    return [m for m, present in ((IMAGENET, IMAGENET in suite_names), (AVG_SHIFTS, len(shifts) == len(SHIFTS)))
            if present]


def optimism_analysis(
    ctx: AnalysisContext,
    *,
    methods: list[Method],
    folds: Annotated[int, Range(2)],
    sizes: list[Annotated[int, Range(1)]] | None,
    seed: int,
    tolerance: Annotated[float, Range(0.0)],
    metrics: list[str] | None,
    learned_epochs: Annotated[int, Range(1)],
    learned_lr: Annotated[float, Range(0.0, low_open=True)],
    learned_batch_size: Annotated[int, Range(1)],
) -> dict[str, Any]:
    """Analysis ``optimism``: ``methods`` cross-fitted over ``folds`` class-stratified folds
    (``seed``) of each of ``sizes`` images per class (null: all of held-out); the in-sample
    and out-of-sample gains over the best individual, their gap, and the gains on ``metrics``."""
    if not methods:
        raise ConfigError("analyses.optimism.methods is empty: name greedy, learned or both")
    if HELD_OUT not in ctx.suite.names:
        raise ConfigError(f"analysis optimism needs {HELD_OUT} in eval.datasets; the suite is {ctx.suite.names}")
    metrics = default_metrics(ctx.suite.names, ctx.suite.shifts) if metrics is None else list(metrics)
    datasets = ctx.suite.datasets_for(metrics)
    names = ctx.pool.names
    done = ctx.store.partial()
    stored: dict[str, str] = dict(done.get("correct") or {})
    tests: dict[str, dict[str, float]] = dict(done.get("tests") or {})
    coefficients: dict[str, Any] = dict(done.get("learned") or {})

    def save() -> None:
        ctx.store.save_partial({"correct": stored, "tests": tests, "learned": coefficients})

    correct = HeldOutCorrectness(ctx, stored, save)
    orders = class_orders(correct.targets, seed)
    largest = max(len(v) for v in orders.values())
    chosen_sizes = clamp_sizes(list(sizes) if sizes else [largest], orders, folds)
    all_splits = [s for _, used in chosen_sizes
                  for s in splits(fold_of_images(orders, used, folds, len(correct)), used, folds)]

    from tqdm.auto import tqdm

    selections: list[Selected] = []
    if "greedy" in methods:
        for split in tqdm(all_splits, desc="optimism: greedy", disable=not ctx.progress, leave=False):
            selections.append(select_greedy(correct, names, split, tolerance))
    if "learned" in methods:
        learned = LearnedRuns(ctx, correct, tests, datasets, epochs=learned_epochs, lr=learned_lr,
                              batch_size=learned_batch_size, seed=seed)
        for split in tqdm(all_splits, desc="optimism: learned", disable=not ctx.progress, leave=False):
            selections.append(learned.select(split, names, coefficients))
            save()

    _test_accuracies(ctx, selections, tests, datasets, save)
    rows = [_row(s, correct, tests, names, metrics) for s in selections]
    requested = {used: size for size, used in chosen_sizes}
    summary = summarise(rows, metrics, requested)

    ctx.store.save_table("optimism_folds", list(rows[0]), [list(r.values()) for r in rows])
    from soup_exp.reporting.analysis_figures import plot_optimism

    ctx.store.register(plot_optimism(summary, metrics, ctx.store.out("optimism_gap")))
    numbers: dict[str, Any] = {"folds": folds, "seed": seed, "metrics": metrics,
                               "held_out_images": len(correct), "classes": len(orders)}
    for method in methods:
        numbers[method] = {str(r["images_per_class"]): {k: v for k, v in r.items() if k not in ("method",
                                                                                              "images_per_class")}
                           for r in summary if r["method"] == method}
    if "learned" in methods:
        numbers["learned_coefficients"] = {k: v["coefficients"] for k, v in coefficients.items()}
    return numbers


def _test_accuracies(ctx: AnalysisContext, selections: Sequence[Selected], tests: dict[str, dict[str, float]],
                     datasets: Sequence[str], save: Callable[[], None]) -> None:
    """Test accuracies of every distinct selected greedy soup and best individual, each once
    (individuals from cached logits, soups ``models_per_pass`` at a time)."""
    pool, names = ctx.pool.ingredients, ctx.pool.names
    for index in sorted({s.best for s in selections}):
        tests.setdefault(names[index], ctx.suite.accuracies(pool[index], datasets))
    members = {s.soup: [names.index(n) for n in s.members] for s in selections if s.method == "greedy"}
    for key, indices in members.items():
        if len(indices) == 1 and key not in tests:
            tests[key] = ctx.suite.accuracies(pool[indices[0]], datasets)

    def soups() -> Iterator[tuple[str, dict[str, torch.Tensor]]]:
        for key, indices in members.items():
            if key not in tests:
                yield key, uniform_soup([pool[i] for i in indices], accumulate_dtype=ctx.accumulate_dtype,
                                        arithmetic=ctx.arithmetic)

    for key, accuracies in ctx.suite.evaluate_weights(soups(), datasets):
        tests[key] = accuracies
        save()


def _row(s: Selected, correct: HeldOutCorrectness, tests: Mapping[str, Mapping[str, float]],
         names: Sequence[str], metrics: Sequence[str]) -> dict[str, Any]:
    """One selection's numbers: gains over its best individual (fractions) in sample, out of
    sample (the left-out fold) and on each metric."""
    soup_correct = correct.get(s.soup) if s.method == "learned" else correct.uniform(
        [names.index(n) for n in s.members])
    best_correct = correct.ingredient(s.best)
    in_sample = s.soup_in_sample - s.best_in_sample
    left_out = int(s.split.left_out.sum())
    out_of_sample = (accuracy_on(soup_correct, s.split.left_out) - accuracy_on(best_correct, s.split.left_out)
                     if left_out else None)
    best_name = names[s.best]
    return {
        "method": s.method, "images_per_class": s.split.per_class, "fold": s.split.fold,
        "selection_images": int(s.split.selection.sum()), "left_out_images": left_out,
        "best_individual": best_name, "soup_size": len(s.members) if s.method == "greedy" else None,
        "soup": " ".join(s.members) if s.method == "greedy" else s.soup,
        "held_out_soup": s.soup_in_sample, "held_out_best": s.best_in_sample,
        "in_sample_gain": in_sample, "out_of_sample_gain": out_of_sample,
        "gap": in_sample - out_of_sample if out_of_sample is not None else None,
        **{f"{m}_gain": float(tests[s.soup][m]) - float(tests[best_name][m]) for m in metrics},
    }


def summarise(rows: Sequence[Mapping[str, Any]], metrics: Sequence[str], requested: Mapping[int, int]
              ) -> list[dict[str, Any]]:
    """Per method and size: the mean gains over the cross-fitting folds, the gap (mean and
    standard deviation over folds), and the whole-subsample selection's gains."""
    out = []
    keys = list(dict.fromkeys((r["method"], r["images_per_class"]) for r in rows))
    for method, size in keys:
        folds = [r for r in rows if (r["method"], r["images_per_class"]) == (method, size) and r["fold"] != FULL]
        full = next(r for r in rows if (r["method"], r["images_per_class"]) == (method, size) and r["fold"] == FULL)
        gaps = [float(r["gap"]) for r in folds]
        entry = {"method": method, "images_per_class": size, "requested": requested.get(size, size),
                 "in_sample_gain": _mean(r["in_sample_gain"] for r in folds),
                 "cross_fitted_gain": _mean(r["out_of_sample_gain"] for r in folds),
                 "gap": _mean(gaps), "gap_sd": _sd(gaps),
                 **{f"cross_fitted_{m}_gain": _mean(r[f"{m}_gain"] for r in folds) for m in metrics},
                 "full_held_out_gain": full["in_sample_gain"],
                 **{f"full_{m}_gain": full[f"{m}_gain"] for m in metrics},
                 "full_soup": full["soup"]}
        out.append(entry)
    return out


def _mean(values: Iterable[Any]) -> float:
    return statistics.fmean(float(v) for v in values)


def _sd(values: Sequence[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0
