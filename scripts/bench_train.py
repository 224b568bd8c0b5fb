"""Training throughput: the real input pipeline vs the same model fed in-memory tensors.

Real: JPEG files -> the project's image reader -> the backbone's train transform with
RandAugment -> DataLoader workers -> one optimiser step (``soup_exp.training.loop.Trainer``).
Limit: the same ``Trainer`` step on a batch already in device memory. The ratio says how
much of the accelerator the input pipeline keeps busy (target on a GPU: >= 0.9 for
ViT-B/32 at batch 256).

    python scripts/bench_train.py --model tiny_clip --batch 64 --device cpu --workers 2
    python scripts/bench_train.py --model vit_b32 --batch 256 --device cuda --workers 14 --warmup 14 --steps 42

DataLoader workers each build whole batches and all start together, so the first
``--workers`` batches arrive at once: time whole rounds (``--warmup`` = ``--workers``,
``--steps`` a multiple of it) or the pipeline looks faster than it is. The JPEGs are
``--files`` distinct files read over and over (all in the page cache, as they would be
anyway once written): decoding costs the same, writing them does not grow with the steps.
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
from hydra import compose, initialize_config_dir
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader

from soup_exp.models import ImageClassifier, build_backbone
from soup_exp.stages.entry import packaged_config_dir
from soup_exp.training.augment import with_randaugment
from soup_exp.training.data import SeededDistributedSampler, TrainImages
from soup_exp.training.distributed import DistContext
from soup_exp.training.loop import Schedule, Trainer
from soup_exp.training.settings import train_settings


def finetune_config(args: argparse.Namespace):
    """The fine-tuning stage's composed config (its train/ defaults included) for this run."""
    with initialize_config_dir(config_dir=str(packaged_config_dir()), version_base="1.3"):
        return compose(config_name="finetune", overrides=[
            f"model={args.model}", "model.pretrained=null", "model.cache_dir=null", "logger=disabled",
            "train.output_dir=unused", "train.lr=1e-5", f"train.batch_size={args.batch}",
            f"train.aug={args.aug}", "train.warmup_steps=0", f"train.compile={args.compile}"])


def write_jpegs(folder: Path, count: int, size: int, distinct: int, seed: int = 0) -> list[tuple[str, int]]:
    """``count`` samples over at most ``distinct`` noise JPEGs at ``size`` px (ImageNet-like
    file sizes at 256+ px)."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(min(count, distinct)):
        path = folder / f"{i:06d}.JPEG"
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path, quality=90)
        paths.append(str(path))
    return [(paths[i % len(paths)], i % 10) for i in range(count)]


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
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps (use --workers on a GPU)")
    parser.add_argument("--files", type=int, default=1024, help="distinct JPEGs the samples cycle through")
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
    cfg = finetune_config(args)
    backbone = build_backbone(cfg.model, pretrained=False)
    model = ImageClassifier(backbone.image_encoder, nn.Linear(backbone.feature_dim, 1000))
    input_size = int(getattr(backbone.image_encoder, "image_size", (224, 224))[0])
    settings = train_settings(cfg.train)
    steps = args.warmup + args.steps
    ctx = DistContext(device=device)
    schedule = Schedule(micro_batch=args.batch, steps_per_epoch=steps, total_steps=steps * 2, warmup=0)
    trainer = Trainer(model, settings, schedule, ctx=ctx, num_classes=1000, precision=args.precision)

    def step(micro_batches, i):
        trainer.train_step(micro_batches, i)

    with tempfile.TemporaryDirectory() as tmp:
        samples = write_jpegs(Path(tmp), args.batch * steps, args.image_size or 2 * input_size, args.files)
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
        "aug": args.aug, "warmup": args.warmup, "steps": args.steps,
        "real_images_per_s": real, "in_memory_images_per_s": limit, "ratio": real / limit,
        ("peak_gpu_memory_gib" if device.type == "cuda" else "peak_rss_gib"): peak,
    }
    # the file keeps exact figures (the ratio is of them); the screen shows them rounded
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in figures.items()}, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
