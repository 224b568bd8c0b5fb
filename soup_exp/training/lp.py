"""The LP init (the paper's model_0): a linear probe on frozen, cached image features.

Features are extracted once per (model weights, file list, transform) and cached as
safetensors, so the LP run, its reruns and sweeps that start from it pay for one pass.
The probe is trained with AdamW on minibatches: it streams over ImageNet-sized feature
sets on one GPU and is driven by the same lr / epochs / batch-size knobs the sweep
records, whereas L-BFGS needs the full batch in memory and a separate regulariser search.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from soup_exp.cluster.signals import quiet_loader_worker
from soup_exp.training.optim import (
    cosine_with_warmup,
    describe_warmup,
    effective_warmup,
    linear_probe_steps,
)
from soup_exp.utils.hashing import file_stamp, stable_hash
from soup_exp.utils.io import atomic_save_safetensors
from soup_exp.utils.runtime import autocast

log = logging.getLogger(__name__)


def _image_reader() -> Callable:
    try:
        from soup_exp.data.images import load_image
    except ImportError:
        from PIL import Image

        def load_image(path: str | os.PathLike, border_crop: int = 0) -> Image.Image:
            with Image.open(path) as image:
                image = image.convert("RGB")
            if border_crop:
                w, h = image.size
                image = image.crop((border_crop, border_crop, w - border_crop, h - border_crop))
            return image
    return load_image


class _ImageFiles(Dataset):
    def __init__(self, samples: Sequence[tuple[str, int]], preprocess: Callable, border_crop: int) -> None:
        self.samples, self.preprocess, self.border_crop = list(samples), preprocess, border_crop
        self.load_image = _image_reader()

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[i]
        return self.preprocess(self.load_image(path, border_crop=self.border_crop)), int(label)


def weights_fingerprint(module: nn.Module) -> str:
    """Content hash of a module's parameters and buffers (the model half of the cache key)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def features_cache_key(
    model_key: str, samples: Sequence[tuple[str, int]], preprocess: Callable, border_crop: int, numerics: str
) -> str:
    files = []
    for path, label in samples:
        files.append((str(path), int(label), *file_stamp(path)))
    return stable_hash({"model": model_key, "files": files, "preprocess": repr(preprocess), "border_crop": border_crop,
                       "numerics": numerics})


def _load_cached(cache_file: Path, key: str) -> tuple[torch.Tensor, torch.Tensor] | None:
    from safetensors import safe_open

    if not cache_file.is_file():
        return None
    try:
        with safe_open(str(cache_file), framework="pt") as f:
            if (f.metadata() or {}).get("key") != key:
                log.info("feature cache %s is for other weights or files; recomputing", cache_file)
                return None
            return f.get_tensor("features"), f.get_tensor("labels")
    except Exception as exc:  # a corrupt cache is rebuilt, never trusted
        log.warning("ignoring unreadable feature cache %s: %s", cache_file, exc)
        return None


@torch.no_grad()
def extract_features(
    image_encoder: nn.Module,
    samples: Sequence[tuple[str, int]],
    preprocess: Callable,
    batch_size: int,
    device: str | torch.device,
    cache_file: str | os.PathLike | None = None,
    *,
    num_workers: int = 0,
    border_crop: int = 0,
    precision: str = "bf16",
    model_key: str | None = None,
    progress: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw (unnormalised) float32 image features and int64 labels, on the CPU.

    With ``cache_file`` the result is reused when the weights (``model_key`` or a hash of
    them), the files (path, label, size, mtime), the transform and the numerics (bf16
    autocast on GPU, fp32 elsewhere) are unchanged.
    """
    if not samples:
        raise ValueError("extract_features got no samples")
    device = torch.device(device)
    key = None
    if cache_file is not None:
        cache_file = Path(cache_file)
        numerics = f"{device.type}:{precision}" if device.type == "cuda" else "fp32"
        key = features_cache_key(model_key or weights_fingerprint(image_encoder), samples, preprocess,
                                 border_crop, numerics)
        cached = _load_cached(cache_file, key)
        if cached is not None:
            log.info("reusing cached features from %s", cache_file)
            return cached
    loader = DataLoader(
        _ImageFiles(samples, preprocess, border_crop), batch_size=batch_size, shuffle=False,
        num_workers=num_workers, pin_memory=device.type == "cuda", worker_init_fn=quiet_loader_worker,
    )
    was_training = image_encoder.training
    image_encoder.to(device).eval()
    chunks, labels = [], []
    try:
        for images, targets in tqdm(loader, desc="extracting features", disable=not progress):
            with autocast(device, precision):
                chunks.append(image_encoder(images.to(device, non_blocking=True)).float().cpu())
            labels.append(targets)
    finally:
        image_encoder.train(was_training)
    features, labels = torch.cat(chunks), torch.cat(labels).long()
    if cache_file is not None:
        atomic_save_safetensors({"features": features, "labels": labels}, cache_file, metadata={"key": key})
        log.info("cached %d features at %s", len(features), cache_file)
    return features, labels


def train_linear_probe(
    features: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    *,
    init: nn.Linear | None = None,
    epochs: int,
    lr: float,
    weight_decay: float,
    batch_size: int,
    seed: int,
    warmup_steps: int = 0,
    progress: bool = False,
) -> nn.Linear:
    """Logistic regression on L2-normalised features (what ``ImageClassifier`` feeds its head).

    ``init`` (e.g. the zero-shot head) is copied, never modified; without it the head
    starts at zero. AdamW with a cosine schedule over ``epochs`` (after ``warmup_steps`` of
    linear warmup, capped like the fine-tunes'); deterministic given ``seed``.
    """
    if features.ndim != 2 or len(features) != len(labels):
        raise ValueError(f"features must be (N, D) with N labels, got {tuple(features.shape)} and {len(labels)} labels")
    if int(labels.min()) < 0 or int(labels.max()) >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes}), got [{int(labels.min())}, {int(labels.max())}]")
    inputs = F.normalize(features.float(), dim=-1)
    labels = labels.long().to(inputs.device)
    head = nn.Linear(inputs.shape[1], num_classes).to(inputs.device)
    with torch.no_grad():
        if init is not None:
            if tuple(init.weight.shape) != tuple(head.weight.shape):
                raise ValueError(f"init head is {tuple(init.weight.shape)}, expected {tuple(head.weight.shape)}")
            head.weight.copy_(init.weight)
            head.bias.copy_(init.bias if init.bias is not None else torch.zeros(num_classes))
        else:
            head.weight.zero_()
            head.bias.zero_()
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    total_steps = linear_probe_steps(len(inputs), epochs, batch_size)
    if warmup_steps:
        log.info("linear probe: %d steps, %s", total_steps, describe_warmup(warmup_steps, total_steps, "train.lp.warmup_steps"))
        scheduler = cosine_with_warmup(optimizer, effective_warmup(warmup_steps, total_steps), total_steps)
    else:
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    generator = torch.Generator().manual_seed(seed)
    for _ in tqdm(range(epochs), desc="linear probe", disable=not progress):
        order = torch.randperm(len(inputs), generator=generator).to(inputs.device)
        for start in range(0, len(inputs), batch_size):
            index = order[start:start + batch_size]
            loss = F.cross_entropy(head(inputs[index]), labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
    return head.cpu().requires_grad_(True)
