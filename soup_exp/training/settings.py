"""Typed, validated view of ``cfg.train``.

Every hyperparameter is checked here, before a model or a dataset is touched, so a typo
in a sweep (negative lr, unknown augmentation string) costs seconds, not a queued GPU job.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, fields
from typing import Any

from omegaconf import DictConfig

from soup_exp.errors import ConfigError
from soup_exp.utils.config import to_plain

MODES = ("zeroshot", "lp", "finetune")
HEAD_INITS = ("zeroshot", "lp")
# The fine-tuning image transform RandAugment is added to (soup_exp.training.augment.BASE_TRANSFORMS).
BASE_TRANSFORMS = ("open_clip", "clip", "timm")

_RANDAUG_SECTION = re.compile(r"^(m\d+|n\d+|p\d*\.?\d+|mstd\d*\.?\d+|mmax\d+|inc[01]|t\w+)$")


@dataclass(frozen=True)
class LinearProbeSettings:
    epochs: int
    lr: float
    weight_decay: float
    batch_size: int
    warmup_steps: int


@dataclass(frozen=True)
class TrainSettings:
    """``cfg.train`` after the sweep applied its draw. The values (and their defaults) live
    in conf/train/default.yaml only; every key must be present."""

    output_dir: str
    mode: str
    init_from: str | None
    head_init: str
    lr: float
    weight_decay: float
    epochs: int
    max_steps: int | None
    batch_size: int
    grad_accum: int
    warmup_steps: int
    grad_clip: float | None
    label_smoothing: float
    mix: float
    cutmix: float
    aug: str | None
    base_transform: str
    compile: bool
    eval_every_steps: int
    ckpt_every_steps: int
    keep_checkpoints: bool
    log_every_steps: int
    lp: LinearProbeSettings

    def hparams(self) -> dict[str, Any]:
        """The hyperparameters that define this ingredient (recorded in ingredient.json)."""
        keys = ("mode", "init_from", "head_init", "lr", "weight_decay", "epochs", "max_steps",
                "batch_size", "grad_accum", "warmup_steps", "grad_clip", "label_smoothing",
                "mix", "cutmix", "aug", "base_transform")
        out = {k: getattr(self, k) for k in keys}
        if self.mode == "lp" or (self.mode == "finetune" and not self.init_from and self.head_init == "lp"):
            out["lp"] = asdict(self.lp)
        return out


def train_settings(train_cfg: DictConfig | dict) -> TrainSettings:
    """Build and validate :class:`TrainSettings`; raises :class:`ConfigError` naming the key."""
    raw = dict(to_plain(train_cfg))
    known = {f.name for f in fields(TrainSettings)}
    unknown, missing = sorted(set(raw) - known), sorted(known - set(raw))
    if unknown:
        raise ConfigError(f"unknown train.* keys {unknown}; known keys: {sorted(known)}")
    if missing:
        raise ConfigError(f"train.* keys {missing} are not set (conf/train/default.yaml defines them all)")
    if not raw.get("output_dir"):
        raise ConfigError("train.output_dir is not set (the ingredient directory to write)")
    lp_raw = raw.pop("lp", None) or {}
    lp_known = {f.name for f in fields(LinearProbeSettings)}
    if set(lp_raw) != lp_known:
        raise ConfigError(f"train.lp must set exactly {sorted(lp_known)}; got {sorted(lp_raw)}")
    settings = TrainSettings(**raw, lp=LinearProbeSettings(**lp_raw))
    validate(settings)
    return settings


def validate(s: TrainSettings) -> None:
    _one_of("train.mode", s.mode, MODES)
    _one_of("train.head_init", s.head_init, HEAD_INITS)
    _positive("train.lr", s.lr)
    _non_negative("train.weight_decay", s.weight_decay)
    _positive_int("train.epochs", s.epochs)
    if s.max_steps is not None:
        _positive_int("train.max_steps", s.max_steps)
    _positive_int("train.batch_size", s.batch_size)
    _positive_int("train.grad_accum", s.grad_accum)
    if s.batch_size % s.grad_accum:
        raise ConfigError(
            f"train.batch_size={s.batch_size} is the global batch and must be divisible by "
            f"train.grad_accum={s.grad_accum}"
        )
    _non_negative_int("train.warmup_steps", s.warmup_steps)
    if s.grad_clip is not None:
        _non_negative("train.grad_clip", s.grad_clip)
    if not 0.0 <= s.label_smoothing < 1.0 or not math.isfinite(s.label_smoothing):
        raise ConfigError(f"train.label_smoothing={s.label_smoothing!r}: expected a value in [0, 1)")
    _non_negative("train.mix", s.mix)
    _non_negative("train.cutmix", s.cutmix)
    validate_aug(s.aug)
    _one_of("train.base_transform", s.base_transform, BASE_TRANSFORMS)
    for key in ("eval_every_steps", "ckpt_every_steps", "log_every_steps"):
        _non_negative_int(f"train.{key}", getattr(s, key))
    _positive_int("train.lp.epochs", s.lp.epochs)
    _positive("train.lp.lr", s.lp.lr)
    _non_negative("train.lp.weight_decay", s.lp.weight_decay)
    _positive_int("train.lp.batch_size", s.lp.batch_size)
    _non_negative_int("train.lp.warmup_steps", s.lp.warmup_steps)


def validate_aug(aug: str | None) -> None:
    """Accept ``None``/``none`` or a timm RandAugment string such as ``rand-m9-n2``.

    timm silently ignores sections it cannot parse, so the grammar is checked here.
    """
    if aug is None or str(aug).lower() in {"none", "null", ""}:
        return
    parts = str(aug).split("-")
    if parts[0] != "rand" or not all(_RANDAUG_SECTION.match(p) for p in parts[1:]):
        raise ConfigError(
            f"train.aug={aug!r} is not a timm RandAugment string; expected e.g. 'rand-m9-n2' "
            "(sections m<int>, n<int>, p<float>, mstd<float>, mmax<int>, inc<0|1>, t<name>) or null"
        )


def _one_of(key: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{key}={value!r}: expected one of {', '.join(choices)}")


def _number(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"{key}={value!r}: expected a finite number")
    return float(value)


def _positive(key: str, value: Any) -> None:
    if _number(key, value) <= 0:
        raise ConfigError(f"{key}={value!r}: expected a positive number")


def _non_negative(key: str, value: Any) -> None:
    if _number(key, value) < 0:
        raise ConfigError(f"{key}={value!r}: expected a number >= 0")


def _positive_int(key: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{key}={value!r}: expected an integer >= 1")


def _non_negative_int(key: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{key}={value!r}: expected an integer >= 0")
