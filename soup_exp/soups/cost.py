"""What cooking a recipe costs, measured by the soup stage around the recipe's run and
recorded as each of its soups' ``cost`` (:class:`~soup_exp.artifacts.SoupCost`):

- ``wall_s``: seconds the recipe ran (its call and each step to its next soup; the stage's
  writing of the soups in between is not counted);
- ``peak_host_bytes``: the process's peak resident set size while it ran, the whole
  process (what the stage held before the recipe included). Where Linux lets a process
  reset its high-water mark (``/proc/self/clear_refs``), it is the kernel's ``VmHWM`` since
  the recipe's step began, so no peak is missed however short; elsewhere it is sampled from
  ``/proc/self/statm`` every ``SAMPLE_INTERVAL_S`` by a background thread and at the start
  and end of every step, and a peak shorter than the interval can be missed. RSS counts
  torch's tensors and the mapped pages of the safetensors files read, which ``tracemalloc``
  (Python objects) and ``ru_maxrss`` (the process's lifetime peak) cannot give per recipe;
  None where ``/proc`` is missing;
- ``peak_device_bytes``: ``torch.cuda.max_memory_allocated`` of the current CUDA device,
  its peak reset when the recipe starts; None when CUDA is not in use;
- ``held_out_passes``: candidates and models the judge (:class:`~soup_exp.soups.judge.Judge`)
  ran over the held-out set: one per candidate scored, one per model whose held-out logits
  were computed (a logits cache hit is no pass, and the pool's scores are measured once per
  stage, by the first recipe that asks), one per epoch a learned soup trains on it;
- ``ingredient_reads``: full-model equivalents read: bytes of every tensor read through
  :class:`~soup_exp.soups.ingredients.LazyWeights` (ingredients, and the zero-shot model,
  LP init or earlier soups a recipe reads) divided by the bytes of one pool ingredient.
  A uniform soup of N reads N; each held-out pass over a model read from disk reads it once more.

A recipe that yields several soups (WiSE-FT's alphas) records in each the cost up to its
own yield, from the recipe's start: the last soup carries the recipe's total.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from soup_exp.artifacts import SoupCost

T = TypeVar("T")

SAMPLE_INTERVAL_S = 0.005
STATM = "/proc/self/statm"
STATUS = "/proc/self/status"
CLEAR_REFS = "/proc/self/clear_refs"


class Tally:
    """A count that several threads add to (the engine reads tensors in a prefetch thread)."""

    def __init__(self) -> None:
        self._value = 0
        self._lock = threading.Lock()

    def add(self, amount: int = 1) -> None:
        with self._lock:
            self._value += amount

    @property
    def value(self) -> int:
        return self._value


HELD_OUT_PASSES = Tally()  # counted by the judge
BYTES_READ = Tally()  # counted by LazyWeights


def host_rss_bytes() -> int | None:
    """This process's resident set size now, or None without ``/proc``."""
    try:
        with open(STATM, "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def reset_peak_rss() -> bool:
    """Restart the kernel's high-water mark of this process's RSS at its RSS now (Linux >= 4.0);
    False where that is not allowed."""
    try:
        with open(CLEAR_REFS, "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int | None:
    """The kernel's high-water mark of this process's RSS (``VmHWM``), or None without it."""
    try:
        with open(STATUS, "rb") as f:
            for line in f:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


class CostMeter:
    """The cost of one recipe's run: ``with CostMeter(model_bytes) as meter``, the recipe's
    soups drawn through :meth:`measured`, :meth:`cost` the cost so far."""

    def __init__(self, model_bytes: int) -> None:
        self._model_bytes = max(int(model_bytes), 1)
        self._wall = 0.0
        self._started: float | None = None
        self._peak_host: int | None = None
        self._peak_lock = threading.Lock()
        self._high_water = False  # VmHWM was reset when the current step began
        self._passes = HELD_OUT_PASSES.value
        self._bytes = BYTES_READ.value
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample_loop, daemon=True, name="soup-cost-rss")

    def __enter__(self) -> CostMeter:
        import torch

        if torch.cuda.is_initialized():
            torch.cuda.reset_peak_memory_stats()
        self._passes, self._bytes = HELD_OUT_PASSES.value, BYTES_READ.value
        self._sampler.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._pause()
        self._stop.set()
        self._sampler.join()

    def measured(self, make: Callable[[], Iterable[T]]) -> Iterator[T]:
        """The items of ``make()``, measured while ``make`` runs and while each next item is
        made, not while the caller handles one."""
        self._resume()
        try:
            iterator = iter(make())
        finally:
            self._pause()
        while True:
            self._resume()
            try:
                item = next(iterator)
            except StopIteration:
                return
            finally:
                self._pause()
            yield item

    def cost(self) -> SoupCost:
        """What the recipe has cost so far."""
        import torch

        device = torch.cuda.max_memory_allocated() if torch.cuda.is_initialized() else None
        return SoupCost(
            wall_s=round(self._wall + (time.perf_counter() - self._started if self._started is not None else 0.0), 6),
            peak_host_bytes=self._peak_host,
            peak_device_bytes=device,
            held_out_passes=HELD_OUT_PASSES.value - self._passes,
            ingredient_reads=round((BYTES_READ.value - self._bytes) / self._model_bytes, 6),
        )

    def _resume(self) -> None:
        self._sample()
        self._high_water = reset_peak_rss()
        self._started = time.perf_counter()

    def _pause(self) -> None:
        if self._started is not None:
            self._wall += time.perf_counter() - self._started
            self._started = None
            self._sample()

    def _sample(self) -> None:
        rss = host_rss_bytes()
        if self._high_water and rss is not None:
            rss = max(rss, peak_rss_bytes() or 0)
        with self._peak_lock:
            if rss is not None and (self._peak_host is None or rss > self._peak_host):
                self._peak_host = rss

    def _sample_loop(self) -> None:
        while not self._stop.wait(SAMPLE_INTERVAL_S):
            if self._started is not None:
                self._sample()
