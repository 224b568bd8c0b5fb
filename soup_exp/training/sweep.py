"""Sweeps: which hyperparameters a sweep member trains with.

A sweep config (``conf/sweep/*.yaml``) has a ``kind``:

- ``none``: train with ``train.*`` as given;
- ``random``: member ``sweep.index`` draws from the search space ``sweep.space``,
  reproducibly from ``(sweep.seed, sweep.index)``. Each key has its own random stream,
  so adding a key to a space never changes the draws of the others;
- ``replay``: ``sweep.name`` (e.g. ``model_43``) replays a published setting from the
  authors' ``hparam_info.json`` (lr, weight decay, epochs, mixup, label smoothing,
  RandAugment); ``sweep.whole_setting=true`` also applies what the paper held fixed across
  its sweep (``sweep.fixed``: batch 512, 500 warmup steps, ...), over an experiment's values.

Fixed ``train.*`` values of a sweep (e.g. ``init_from``) live in the sweep's YAML (it is a
``_global_`` package), so command-line overrides still win over them; the draw itself is
written into ``cfg.train`` at runtime and recorded in ``ingredient.json``.
"""

from __future__ import annotations

import logging
import math
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, open_dict

from soup_exp.errors import ConfigError
from soup_exp.utils.config import to_plain
from soup_exp.utils.io import read_json

log = logging.getLogger(__name__)

PACKAGED_HPARAMS = Path(__file__).resolve().parents[1] / "reference" / "model-soups-vitb32" / "hparam_info.json"

# authors' key in hparam_info.json -> our train.* key
PUBLISHED_KEYS = {
    "lr": "lr",
    "wd": "weight_decay",
    "epochs": "epochs",
    "mix": "mix",
    "smoothing": "label_smoothing",
    "aug": "aug",
}


@dataclass
class SweepDraw:
    """One sweep member: its name, the ``train.*`` values it sets, and what was drawn."""

    kind: str
    name: str
    index: int | None
    seed: int | None
    train: dict[str, Any] = field(default_factory=dict)
    drawn: dict[str, Any] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "index": self.index, "seed": self.seed,
                "drawn": self.drawn}


# ---- samplers: (random generator, spec) -> value --------------------------------------

def _bounds(spec: Mapping[str, Any]) -> tuple[float, float]:
    low, high = spec.get("low"), spec.get("high")
    if low is None or high is None or not low <= high:
        raise ConfigError(f"sweep space entry {dict(spec)}: expected low <= high")
    return low, high


def _log_uniform(rng: np.random.Generator, spec: Mapping[str, Any]) -> float:
    low, high = _bounds(spec)
    if low <= 0:
        raise ConfigError(f"sweep space entry {dict(spec)}: log_uniform needs low > 0")
    return float(math.exp(rng.uniform(math.log(low), math.log(high))))


def _uniform(rng: np.random.Generator, spec: Mapping[str, Any]) -> float:
    low, high = _bounds(spec)
    return float(rng.uniform(low, high))


def _int_uniform(rng: np.random.Generator, spec: Mapping[str, Any]) -> int:
    low, high = _bounds(spec)
    return int(rng.integers(int(low), int(high), endpoint=True))


def _choice(rng: np.random.Generator, spec: Mapping[str, Any]) -> Any:
    values = list(spec.get("values") or [])
    if not values:
        raise ConfigError(f"sweep space entry {dict(spec)}: choice needs a non-empty 'values' list")
    return values[int(rng.integers(len(values)))]


def _randaugment(rng: np.random.Generator, spec: Mapping[str, Any]) -> str:
    """timm RandAugment string ``rand-m<M>-n<N>``: M uniform in its range; N uniform in its
    range, or drawn with ``num_layers_weights`` (one weight per N, e.g. the published 21/18/5)."""
    m_low, m_high = spec.get("magnitude", (1, 20))
    n_low, n_high = spec.get("num_layers", (0, 2))
    magnitude = int(rng.integers(m_low, m_high, endpoint=True))
    weights = spec.get("num_layers_weights")
    if weights is None:
        layers = int(rng.integers(n_low, n_high, endpoint=True))
    else:
        values = list(range(int(n_low), int(n_high) + 1))
        p = np.asarray(weights, dtype=float)
        if len(p) != len(values) or (p < 0).any() or p.sum() <= 0:
            raise ConfigError(f"sweep space entry {dict(spec)}: num_layers_weights needs one weight >= 0 "
                              f"per N in {values}, not all zero")
        layers = int(rng.choice(values, p=p / p.sum()))
    return f"rand-m{magnitude}-n{layers}"


SAMPLERS: dict[str, Callable[[np.random.Generator, Mapping[str, Any]], Any]] = {
    "log_uniform": _log_uniform,
    "uniform": _uniform,
    "int_uniform": _int_uniform,
    "choice": _choice,
    "randaugment": _randaugment,
}


def draw_member(space: Mapping[str, Mapping[str, Any]], seed: int, index: int) -> dict[str, Any]:
    """Draw every key of ``space`` for member ``index``; ``p_off`` is the share of members that get ``off_value``."""
    out: dict[str, Any] = {}
    for key, spec in space.items():
        dist = spec.get("dist")
        if dist not in SAMPLERS:
            raise ConfigError(f"sweep.space.{key}.dist={dist!r}: expected one of {', '.join(SAMPLERS)}")
        rng = np.random.default_rng([int(seed), int(index), zlib.crc32(key.encode())])
        p_off = float(spec.get("p_off", 0.0))
        if not 0.0 <= p_off <= 1.0:
            raise ConfigError(f"sweep.space.{key}.p_off={p_off}: expected a probability in [0, 1]")
        off = rng.random() < p_off
        out[key] = spec.get("off_value") if off else SAMPLERS[dist](rng, spec)
    return out


# ---- sweep kinds --------------------------------------------------------------------


def _none(sweep: DictConfig) -> SweepDraw:
    return SweepDraw("none", str(sweep.name), sweep.get("index"), None)


def _random(sweep: DictConfig) -> SweepDraw:
    space = to_plain(sweep.get("space")) or {}
    if not space:
        raise ConfigError("sweep.kind=random needs a non-empty sweep.space")
    index, seed = sweep.get("index"), sweep.seed
    if not isinstance(index, int) or index < 0:
        raise ConfigError(f"sweep.index={index!r}: expected an integer >= 0 (use sweep.index='range(N)' with -m)")
    drawn = draw_member(space, seed, index)
    return SweepDraw("random", str(sweep.name), index, seed, train=dict(drawn), drawn=drawn)


def published_hparams(source: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """The authors' ``hparam_info.json``: ``source`` when given, else the packaged copy."""
    path = Path(source).expanduser() if source else PACKAGED_HPARAMS
    if not path.is_file():
        raise ConfigError(f"sweep.source={source}: no such file (leave it null for the authors' "
                          "hparam_info.json shipped with soup-exp)")
    return read_json(path)


def replay_train_values(entry: Mapping[str, Any]) -> dict[str, Any]:
    """Map one published entry onto ``train.*``; the LP init (model_0) becomes ``mode=lp``."""
    if "lr" not in entry:
        return {"mode": "lp", "init_from": None}
    return {ours: entry[theirs] for theirs, ours in PUBLISHED_KEYS.items() if theirs in entry}


def _replay(sweep: DictConfig) -> SweepDraw:
    table = published_hparams(sweep.get("source"))
    name = str(sweep.name)
    if name not in table:
        raise ConfigError(
            f"sweep.name={name!r} is not in the published hyperparameters "
            f"(known: model_0 .. model_{len(table) - 1})"
        )
    entry = table[name]
    train = replay_train_values(entry)
    if train.get("mode") != "lp" and sweep.get("whole_setting"):
        train.update(to_plain(sweep.get("fixed")) or {})
    return SweepDraw("replay", name, None, None, train=train, drawn=dict(entry))


def describe_replay(draw: SweepDraw, sweep: DictConfig, train: DictConfig) -> str:
    """Which ``train.*`` keys a replay sets, and which of the paper's fixed settings it
    leaves to this config (an experiment's batch size, say) unless ``sweep.whole_setting``."""
    sets = ", ".join(f"{k}={v}" for k, v in draw.train.items())
    text = f"replay {draw.name} sets train.{{{sets}}}"
    fixed = to_plain(sweep.get("fixed")) or {}
    kept = {k: train.get(k) for k, v in fixed.items() if k not in draw.train and train.get(k) != v}
    if kept and draw.train.get("mode") != "lp":
        text += (f"; it keeps this config's {', '.join(f'{k}={v}' for k, v in kept.items())} where the "
                 f"paper used {', '.join(f'{k}={fixed[k]}' for k in kept)}: add sweep.whole_setting=true "
                 "to replay the whole published setting")
    return text


SWEEP_KINDS: dict[str, Callable[[DictConfig], SweepDraw]] = {
    "none": _none,
    "random": _random,
    "replay": _replay,
}


def resolve_sweep(sweep: DictConfig) -> SweepDraw:
    kind = sweep.kind
    if kind not in SWEEP_KINDS:
        raise ConfigError(f"sweep.kind={kind!r}: expected one of {', '.join(SWEEP_KINDS)}")
    return SWEEP_KINDS[kind](sweep)


def apply_sweep(cfg: DictConfig) -> SweepDraw:
    """Write the sweep member's values into ``cfg.train`` (in place) and return the draw."""
    result = resolve_sweep(cfg.sweep)
    unknown = sorted(set(result.train) - set(cfg.train))
    if unknown:
        raise ConfigError(f"sweep {result.name!r} sets unknown train keys {unknown}")
    if result.kind == "replay":
        log.info("%s", describe_replay(result, cfg.sweep, cfg.train))
    with open_dict(cfg):
        for key, value in result.train.items():
            cfg.train[key] = value
    return result
