"""Training throughput: the real input pipeline vs the same model fed in-memory tensors.

Real: JPEG files -> the project's image reader -> the backbone's train transform with
RandAugment -> DataLoader workers -> one optimiser step (``soup_exp.training.loop.Trainer``).
Limit: the same ``Trainer`` step on a batch already in device memory. The ratio says how
much of the accelerator the input pipeline keeps busy (target on a GPU: >= 0.9 for
ViT-B/32 at batch 256).

    python scripts/bench_train.py --model tiny_clip --batch 64 --device cpu --workers 2
    python scripts/bench_train.py --model vit_b32 --batch 256 --device cuda --workers 16
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader

from soup_exp.models import ImageClassifier, build_backbone
from soup_exp.training.augment import with_randaugment
from soup_exp.training.data import SeededDistributedSampler, TrainImages
from soup_exp.training.distributed import DistContext
from soup_exp.training.loop import Schedule, Trainer
from soup_exp.training.settings import train_settings
from soup_exp.utils.entry import packaged_config_dir

CONF = packaged_config_dir()


def write_jpegs(folder: Path, count: int, size: int, seed: int = 0) -> list[tuple[str, int]]:
    """Noise JPEGs at ``size`` px (ImageNet-like file sizes at 256+ px)."""
    rng = np.random.default_rng(seed)
    samples = []
    for i in range(count):
        path = folder / f"{i:06d}.JPEG"
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path, quality=90)
        samples.append((str(path), i % 10))
    return samples


def timed(step, batches, warmup: int, device: torch.device) -> float:
    """Images per second over the batches after ``warmup`` steps."""
    count, start = 0, None
    for i, batch in enumerate(batches):
        if i == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        if i >= warmup:
            count += batch[0][0].shape[0]
        step(batch, i)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny_clip", help="a conf/model/*.yaml name")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20, help="timed steps (after --warmup)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=None, help="JPEG side (default: 2x model input)")
    parser.add_argument("--aug", default="rand-m9-n2")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    model_cfg = OmegaConf.load(CONF / "model" / f"{args.model}.yaml")
    model_cfg.pretrained = None
    model_cfg.cache_dir = None
    backbone = build_backbone(model_cfg, pretrained=False)
    model = ImageClassifier(backbone.image_encoder, nn.Linear(backbone.feature_dim, 1000))
    input_size = int(getattr(backbone.image_encoder, "image_size", (224, 224))[0])
    train_cfg = OmegaConf.merge(OmegaConf.load(CONF / "train" / "default.yaml"), {
        "output_dir": "unused", "lr": 1e-5, "batch_size": args.batch, "aug": args.aug,
        "warmup_steps": 0, "compile": args.compile})
    settings = train_settings(train_cfg)
    steps = args.warmup + args.steps
    ctx = DistContext(device=device)
    schedule = Schedule(micro_batch=args.batch, steps_per_epoch=steps, total_steps=steps * 2, warmup=0)
    trainer = Trainer(model, settings, schedule, ctx=ctx, num_classes=1000, precision=args.precision)

    def step(micro_batches, i):
        trainer.train_step(micro_batches, i)

    with tempfile.TemporaryDirectory() as tmp:
        samples = write_jpegs(Path(tmp), args.batch * steps, args.image_size or 2 * input_size)
        dataset = TrainImages(samples, with_randaugment(backbone.preprocess_train, args.aug))
        sampler = SeededDistributedSampler(dataset, num_replicas=1, rank=0, seed=0)
        loader = DataLoader(dataset, batch_size=args.batch, sampler=sampler, drop_last=True,
                            num_workers=args.workers, pin_memory=device.type == "cuda",
                            persistent_workers=args.workers > 0, prefetch_factor=4 if args.workers else None)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        real = timed(step, ([b] for b in loader), args.warmup, device)

    images = torch.randn(args.batch, 3, input_size, input_size, device=device)
    targets = torch.randint(0, 1000, (args.batch,), device=device)
    limit = timed(step, ([(images, targets)] for _ in range(steps)), args.warmup, device)

    peak = (torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)
    figures = {
        "model": args.model, "device": str(device), "batch": args.batch, "workers": args.workers,
        "aug": args.aug, "real_images_per_s": round(real, 1), "in_memory_images_per_s": round(limit, 1),
        "ratio": round(real / limit, 3),
        ("peak_gpu_memory_gib" if device.type == "cuda" else "peak_rss_gib"): round(peak, 2),
    }
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
