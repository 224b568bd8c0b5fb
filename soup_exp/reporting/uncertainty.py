"""Paired uncertainty of the report's numbers: bootstrap intervals and McNemar's exact test.

Every model of a table was scored on the same images, so a difference between two of them
is a paired comparison. The bootstrap draws, for each dataset, one set of image weights
per replicate (multinomial counts, from a generator seeded by ``seed`` and the dataset's
name) and applies the same draws to every model: the replicate accuracies of two models
are paired, and their difference's percentile interval is the paired interval. Avg shifts
averages the five shifts' replicates, each shift resampled on its own, as the shifts are
separate test sets. McNemar's exact test uses the discordant images only (one model right,
the other wrong): under equal accuracy each is a fair coin.

A difference on one dataset is called significant at level ``level`` when McNemar's
p-value is below ``1 - level``; on Avg shifts, which has no single paired test, when its
bootstrap interval excludes zero.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from soup_exp.vocabulary import AVG_SHIFTS, SHIFTS

# Elements of one replicate chunk's counts matrix: 32 MB of int64 at a time.
CHUNK_ELEMENTS = 1 << 22


@dataclass(frozen=True)
class Interval:
    low: float
    high: float

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0


@dataclass(frozen=True)
class McNemar:
    """``only_a``: images model A gets right and B wrong; ``only_b`` the reverse."""

    only_a: int
    only_b: int
    p_value: float


@dataclass(frozen=True)
class Difference:
    """``a - b`` on one metric: the estimate, its paired interval, McNemar's test (datasets
    only) and whether it is significant at the bootstrap's level."""

    estimate: float
    interval: Interval
    mcnemar: McNemar | None
    significant: bool


def _log_binomial_half_cdf(k: int, n: int) -> float:
    """log P(X <= k) for X ~ Binomial(n, 1/2), summed in log space (n can be 10^5)."""
    terms = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) for i in range(k + 1)]
    top = max(terms)
    return top + math.log(math.fsum(math.exp(t - top) for t in terms)) - n * math.log(2)


def mcnemar_exact(a: np.ndarray, b: np.ndarray) -> McNemar:
    """McNemar's exact two-sided test of per-image hits ``a`` and ``b`` (same images):
    ``min(1, 2 P(X <= min(only_a, only_b)))`` with X ~ Binomial(only_a + only_b, 1/2)."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"McNemar needs hits on the same images, got {a.shape} and {b.shape}")
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    n = only_a + only_b
    if n == 0:
        return McNemar(0, 0, 1.0)
    p = min(1.0, 2 * math.exp(_log_binomial_half_cdf(min(only_a, only_b), n)))
    return McNemar(only_a, only_b, p)


def _dataset_seed(seed: int, dataset: str) -> list[int]:
    """Draws that depend on the dataset's name, not on which other datasets or models exist."""
    return [int(seed), zlib.crc32(dataset.encode())]


def replicate_accuracies(bits: np.ndarray, replicates: int, seed: Sequence[int]) -> np.ndarray:
    """``(replicates, models)`` bootstrap accuracies of ``bits`` (``(images, models)`` hits):
    each replicate weighs every image by how often a resample of the images drew it."""
    images = bits.shape[0]
    rng = np.random.default_rng(list(seed))
    hits = bits.astype(np.float64)
    out = np.empty((replicates, bits.shape[1]))
    chunk = max(1, CHUNK_ELEMENTS // max(1, images))
    for start in range(0, replicates, chunk):
        size = min(chunk, replicates - start)
        drawn = rng.integers(0, images, size=(size, images))
        counts = np.bincount((drawn + images * np.arange(size)[:, None]).ravel(), minlength=size * images)
        out[start:start + size] = counts.reshape(size, images) @ hits / images
    return out


class PairedBootstrap:
    """Replicate accuracies of every model on every dataset it has hits for, the same
    image draws for all models of a dataset (so differences are paired).

    ``identities`` (``{model: {dataset: identity}}``, e.g. the rows' dataset fingerprints)
    says which hits are of the same images; models whose hits are of different contents
    (a dataset that changed between two evaluations) are never paired. Without it, hits of
    the same length are taken to be of the same images."""

    def __init__(self, hits: Mapping[str, Mapping[str, np.ndarray]], *, replicates: int = 1000, seed: int = 0,
                 level: float = 0.95, identities: Mapping[str, Mapping[str, str]] | None = None) -> None:
        if replicates < 2 or not 0 < level < 1:
            raise ValueError(f"bootstrap: replicates >= 2 and 0 < level < 1, got {replicates} and {level}")
        self.hits = {model: dict(per_dataset) for model, per_dataset in hits.items()}
        self.replicates, self.seed, self.level = replicates, seed, level
        self._replicates: dict[str, dict[str, np.ndarray]] = {}
        self._images: dict[tuple[str, str], tuple[int, str]] = {}
        for model, per_dataset in self.hits.items():
            for dataset, bits in per_dataset.items():
                identity = ((identities or {}).get(model) or {}).get(dataset, "")
                self._images[model, dataset] = (len(bits), str(identity))
        for dataset in sorted({d for _, d in self._images}):
            groups: dict[tuple[int, str], list[str]] = {}
            for (model, name), images in self._images.items():
                if name == dataset:
                    groups.setdefault(images, []).append(model)
            for (size, _), models in groups.items():
                stacked = np.stack([self.hits[m][dataset] for m in models], axis=1)
                drawn = replicate_accuracies(stacked, replicates, [*_dataset_seed(seed, dataset), size])
                for column, model in enumerate(models):
                    self._replicates.setdefault(model, {})[dataset] = drawn[:, column]

    def _draws(self, model: str, metric: str) -> np.ndarray | None:
        mine = self._replicates.get(model, {})
        if metric == AVG_SHIFTS:
            if not all(s in mine for s in SHIFTS):
                return None
            return np.mean([mine[s] for s in SHIFTS], axis=0)
        return mine.get(metric)

    def _interval(self, draws: np.ndarray) -> Interval:
        tail = (1 - self.level) / 2
        low, high = np.quantile(draws, [tail, 1 - tail])
        return Interval(float(low), float(high))

    def interval(self, model: str, metric: str) -> Interval | None:
        """The percentile interval of ``model``'s accuracy on ``metric``, or None without hits."""
        draws = self._draws(model, metric)
        return None if draws is None else self._interval(draws)

    def difference(self, a: str, b: str, metric: str) -> Difference | None:
        """``a - b`` on ``metric`` (a dataset or Avg shifts), or None unless both have hits
        on the same images."""
        first, second = self._draws(a, metric), self._draws(b, metric)
        if first is None or second is None or not self._paired(a, b, metric):
            return None
        interval = self._interval(first - second)
        if metric == AVG_SHIFTS:
            estimate = float(np.mean([self.hits[a][s].mean() - self.hits[b][s].mean() for s in SHIFTS]))
            return Difference(estimate, interval, None, interval.excludes_zero())
        test = mcnemar_exact(self.hits[a][metric], self.hits[b][metric])
        estimate = float(self.hits[a][metric].mean() - self.hits[b][metric].mean())
        return Difference(estimate, interval, test, test.p_value < 1 - self.level)

    def _paired(self, a: str, b: str, metric: str) -> bool:
        datasets = SHIFTS if metric == AVG_SHIFTS else (metric,)
        return all(self._images[a, d] == self._images[b, d] for d in datasets)
