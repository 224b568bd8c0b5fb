"""Typed, validated view of ``cfg.train``.

Every hyperparameter is checked here, before a model or a dataset is touched, so a typo
in a sweep (negative lr, unknown augmentation string) costs seconds, not a queued GPU job.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields
from typing import Annotated, Any, Literal

from omegaconf import DictConfig

from soup_exp.errors import ConfigError
from soup_exp.utils.checks import (
    NON_NEGATIVE,
    NON_NEGATIVE_INT,
    POSITIVE,
    POSITIVE_INT,
    Range,
    check_value,
)
from soup_exp.utils.config import to_plain

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


SETTINGS: dict[str, Any] = {
    "mode": Literal["zeroshot", "lp", "finetune"],
    "head_init": Literal["zeroshot", "lp"],
    "lr": POSITIVE,
    "weight_decay": NON_NEGATIVE,
    "epochs": POSITIVE_INT,
    "max_steps": POSITIVE_INT | None,
    "batch_size": POSITIVE_INT,
    "grad_accum": POSITIVE_INT,
    "warmup_steps": NON_NEGATIVE_INT,
    "grad_clip": NON_NEGATIVE | None,
    "label_smoothing": Annotated[float, Range(0.0, 1.0, high_open=True)],
    "mix": NON_NEGATIVE,
    "cutmix": NON_NEGATIVE,
    "base_transform": Literal[BASE_TRANSFORMS],
    "compile": bool,
    "eval_every_steps": NON_NEGATIVE_INT,
    "ckpt_every_steps": NON_NEGATIVE_INT,
    "keep_checkpoints": bool,
    "log_every_steps": NON_NEGATIVE_INT,
    "lp.epochs": POSITIVE_INT,
    "lp.lr": POSITIVE,
    "lp.weight_decay": NON_NEGATIVE,
    "lp.batch_size": POSITIVE_INT,
    "lp.warmup_steps": NON_NEGATIVE_INT,
}


def validate(s: TrainSettings) -> None:
    values = {**asdict(s), **{f"lp.{k}": v for k, v in asdict(s.lp).items()}}
    for key, hint in SETTINGS.items():
        check_value(f"train.{key}", values[key], hint)
    if s.batch_size % s.grad_accum:
        raise ConfigError(
            f"train.batch_size={s.batch_size} is the global batch and must be divisible by "
            f"train.grad_accum={s.grad_accum}"
        )
    validate_aug(s.aug)


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
