"""The demo's shared pretrained start: a short contrastive pretraining of the tiny CLIP.

The paper fine-tunes every ingredient from one pretrained CLIP; that shared start is what
puts the fine-tunes in one basin so that averaging them works. No checkpoint can be
downloaded for a project-defined architecture, so the demo makes its own once, from
generated image-caption pairs (open_clip's CSV format) with open_clip's own ``ClipLoss``,
and caches it as a safetensors file that open_clip loads like any local checkpoint.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from soup_exp.data.images import load_image
from soup_exp.utils.hashing import file_sha256
from soup_exp.utils.io import atomic_save_safetensors, atomic_write_json, file_lock, read_json
from soup_exp.utils.runtime import code_version

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PretrainSettings:
    """``model.pretrain`` in conf/model/tiny_clip.yaml."""

    epochs: int = 10
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.1
    warmup_steps: int = 20
    seed: int = 0
    max_pairs: int | None = None
    train_token_embedding: bool = False

    @classmethod
    def from_config(cls, raw: Mapping[str, Any]) -> PretrainSettings:
        raw = dict(raw)
        raw.pop("captions", None)
        unknown = sorted(set(raw) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown model.pretrain keys {unknown}; known: {[f.name for f in fields(cls)]}")
        settings = cls(**{k: v for k, v in raw.items() if v is not None or k == "max_pairs"})
        if settings.epochs < 1 or settings.batch_size < 2 or settings.lr <= 0:
            raise ValueError(f"model.pretrain needs epochs >= 1, batch_size >= 2 and lr > 0, got {settings}")
        return settings


def _config_dict(model_cfg: Any) -> dict:
    from omegaconf import OmegaConf

    if OmegaConf.is_config(model_cfg):
        return OmegaConf.to_container(model_cfg, resolve=True)
    return dict(model_cfg)


def read_captions(captions_csv: str | os.PathLike) -> list[tuple[Path, str]]:
    """Rows of an open_clip CSV (tab-separated, ``filepath`` and ``title`` columns).

    Relative file paths are resolved against the CSV's directory.
    """
    path = Path(captions_csv)
    if not path.is_file():
        raise FileNotFoundError(f"caption file not found: {path} (expected a tab-separated CSV with columns filepath, title)")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, delimiter="\t")
        missing = {"filepath", "title"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{path}: header {reader.fieldnames} lacks {sorted(missing)}; expected tab-separated 'filepath<TAB>title'")
        rows = [(path.parent / r["filepath"], r["title"]) for r in reader]
    if not rows:
        raise ValueError(f"{path} holds no caption rows")
    return rows


def _freeze_token_embeddings(model: torch.nn.Module) -> None:
    """Keep the vocabulary's embeddings at their random init.

    The captions use about a hundred of the tokenizer's 49,408 tokens, and updating every
    row each step costs a quarter of the step; random rows already tell the words apart.
    """
    for module in model.modules():
        if isinstance(module, torch.nn.Embedding):
            module.weight.requires_grad_(False)


def _batches(n: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    order = torch.randperm(n, generator=generator)
    for start in range(0, n - batch_size + 1, batch_size):  # full batches: ClipLoss needs negatives
        yield order[start:start + batch_size]


def _lr_at(step: int, total: int, settings: PretrainSettings) -> float:
    if step < settings.warmup_steps:
        return settings.lr * (step + 1) / settings.warmup_steps
    progress = (step - settings.warmup_steps) / max(1, total - settings.warmup_steps)
    return 0.5 * settings.lr * (1 + math.cos(math.pi * progress))


def pretrain_clip(
    model_cfg: Mapping, captions_csv: str | os.PathLike, settings: PretrainSettings, progress: bool = True
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Contrastive pretraining from random init; returns the CLIP state dict and stats."""
    import open_clip  # with the backbones below: heavy, and a dry run must not import them

    from soup_exp.models.backbones import build_backbone

    rows = read_captions(captions_csv)
    if settings.max_pairs:
        rows = rows[: settings.max_pairs]
    if len(rows) < settings.batch_size:
        raise ValueError(f"{captions_csv} has {len(rows)} pairs, fewer than model.pretrain.batch_size={settings.batch_size}")
    torch.manual_seed(settings.seed)
    backbone = build_backbone({**model_cfg, "pretrained": None}, pretrained=False)
    model, tokenizer, transform = backbone.clip_model, backbone.tokenizer, backbone.preprocess_train
    images = [load_image(p) for p, _ in tqdm(rows, desc="pretrain: reading images", disable=not progress)]
    texts = tokenizer([t for _, t in rows])

    loss_fn = open_clip.ClipLoss()
    if not settings.train_token_embedding:
        _freeze_token_embeddings(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=settings.lr, weight_decay=settings.weight_decay)
    steps_per_epoch = len(rows) // settings.batch_size
    total = steps_per_epoch * settings.epochs
    generator = torch.Generator().manual_seed(settings.seed)
    max_log_scale = math.log(100.0)  # open_clip's training clamp
    model.train()
    start, losses = time.time(), []
    bar = tqdm(total=total, desc="pretrain tiny CLIP", disable=not progress)
    step = 0
    for _epoch in range(settings.epochs):
        for index in _batches(len(rows), settings.batch_size, generator):
            for group in optimizer.param_groups:
                group["lr"] = _lr_at(step, total, settings)
            batch = torch.stack([transform(images[i]) for i in index.tolist()])
            image_features, text_features, logit_scale = model(batch, texts[index])[:3]
            loss = loss_fn(image_features, text_features, logit_scale)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"pretraining loss became {loss.item()} at step {step}; lower model.pretrain.lr")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, max_log_scale)
            losses.append(loss.item())
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
    bar.close()
    stats = {
        "pairs": len(rows),
        "steps": step,
        "first_loss": losses[0],
        "final_loss": sum(losses[-steps_per_epoch:]) / steps_per_epoch,
        "seconds": round(time.time() - start, 1),
    }
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, stats


def sidecar_path(weights: Path) -> Path:
    return weights.with_name(weights.name + ".json")


def ensure_pretrained(
    model_cfg: Mapping, captions_csv: str | os.PathLike | None = None, progress: bool = True
) -> Path:
    """Return ``model.pretrained``, pretraining it first if it does not exist yet.

    conf/model/tiny_clip.yaml's ``model.prepare`` step, which the data stage runs; the
    captions are ``captions_csv`` or else ``model.pretrain.captions`` (the generated ones).

    Cached: when the file exists nothing is recomputed, unless its sidecar ``<file>.json``
    (settings and the caption file's hash) shows it was made from other settings or
    captions. Ingredients hold their full weights, so replacing the start never breaks them.
    """
    cfg = _config_dict(model_cfg)
    target = cfg.get("pretrained")
    if not target or not str(target).endswith(".safetensors"):
        raise ValueError(
            f"model.pretrained must be a local .safetensors path for a pretrained-here model, got '{target}'"
        )
    target = Path(target)
    spec = cfg.get("pretrain")
    if not target.is_file() and not spec:
        raise FileNotFoundError(f"pretrained checkpoint {target} does not exist and model.pretrain is not set to create it")
    if spec:
        settings = PretrainSettings.from_config(spec)
        captions_csv = captions_csv or spec.get("captions")
    with file_lock(target.with_name(target.name + ".lock"), "waiting for another job pretraining the model"):
        if target.is_file() and not _is_stale(target, cfg, captions_csv):
            log.info("pretrained start cached at %s", target)
            return target
        if not captions_csv:
            raise ValueError("no caption file given: pass captions_csv or set model.pretrain.captions")
        log.info("pretraining %s on %s -> %s", cfg["name"], captions_csv, target)
        state_dict, stats = pretrain_clip(cfg, captions_csv, settings, progress=progress)
        atomic_save_safetensors(state_dict, target, metadata={"model": cfg["name"], "format": "open_clip"})
        atomic_write_json(sidecar_path(target), {
            "model": cfg["name"],
            "settings": asdict(settings),
            "captions": str(captions_csv),
            "captions_sha256": file_sha256(captions_csv),
            "stats": stats,
            "code_version": code_version(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        })
        log.info("pretrained start written to %s (%s)", target, stats)
        return target


def _is_stale(target: Path, cfg: Mapping, captions_csv: str | os.PathLike | None) -> bool:
    """True when our own sidecar says the file came from other settings or captions.

    Files without a sidecar (a user-supplied checkpoint) are never stale.
    """
    sidecar = sidecar_path(target)
    if not sidecar.is_file() or not cfg.get("pretrain"):
        return False
    recorded = read_json(sidecar)
    reasons = []
    if recorded.get("settings") != asdict(PretrainSettings.from_config(cfg["pretrain"])):
        reasons.append("settings changed")
    if captions_csv and Path(captions_csv).is_file() and recorded.get("captions_sha256") != file_sha256(captions_csv):
        reasons.append("captions changed")
    if reasons:
        log.warning("%s is out of date (%s); pretraining again", target, ", ".join(reasons))
    return bool(reasons)
