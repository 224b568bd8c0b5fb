#!/usr/bin/env python
"""Evaluation throughput: JPEG decoding vs the preprocessed cache vs the model alone.

Measures images/s for
  (a) a cold pass that decodes and resizes every JPEG (no preprocessed cache),
  (b) a pass that reads the preprocessed uint8 cache (after it was built once),
  (c) the model alone on in-memory, already normalised tensors (the upper bound),
and prints b/c (how close the cached pass gets to the model's speed; target >= 0.9) and
b/a (what the cache buys; target >= 3 where decoding dominates). It generates its own
JPEGs at ImageNet-like size (500x375 by default), so it needs no dataset.

    python scripts/bench_eval.py --n 2000 --device cuda --batch-size 256 --workers 8
    python scripts/bench_eval.py --n 200 --models tiny vit_b32 --device cpu --workers 2
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import open_clip
import torch
from PIL import Image
from torch import nn

import soup_exp.models  # noqa: F401  (registers the tiny model config with open_clip)
from soup_exp.data.base import LabeledImages
from soup_exp.evaluation.evaluator import Evaluator
from soup_exp.models.classifier import ImageClassifier
from soup_exp.utils.runtime import autocast, resolve_device

MODELS: dict[str, str] = {"tiny": "soup-tiny-vit", "vit_b32": "ViT-B-32"}


def write_jpegs(root: Path, n: int, size: tuple[int, int], seed: int = 0) -> LabeledImages:
    """Smooth random scenes plus noise, saved at quality 90: decode cost like photos."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    samples = []
    for i in range(n):
        path = root / f"{i:06d}.jpg"
        if not path.exists():
            coarse = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8))
            scene = np.asarray(coarse.resize(size, Image.BICUBIC), dtype=np.int16)
            noisy = np.clip(scene + rng.integers(-20, 21, scene.shape), 0, 255).astype(np.uint8)
            Image.fromarray(noisy).save(path, quality=90)
        samples.append((str(path), i % 1000))
    return LabeledImages("Bench", samples, 1000, root=str(root))


def build_model(name: str) -> tuple[nn.Module, object]:
    """Random-weight classifier (image tower + 1000-way head) and its eval transform."""
    clip, _, preprocess = open_clip.create_model_and_transforms(MODELS[name], pretrained=None)
    head = nn.Linear(clip.visual.output_dim, 1000)
    return ImageClassifier(clip.visual, head), preprocess


def timed(fn: Callable[[], object], device: torch.device) -> tuple[float, object]:
    """(seconds, result) of ``fn()``, device work included."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, result


def model_alone(model: nn.Module, evaluator: Evaluator, n: int, batch_size: int) -> Callable[[], None]:
    """Forward passes over ``n`` images of one normalised batch kept on the device."""
    first, _ = next(evaluator.batches("Bench", batch_size))
    batch = first.clone()
    model.to(evaluator.device).eval()

    def run() -> None:
        with torch.inference_mode(), autocast(evaluator.device, evaluator.precision):
            done = 0
            while done < n:
                take = min(batch_size, n - done)
                model(batch[:take]).float().argmax(dim=1)
                done += take

    run()  # warm-up (kernels, autotuning)
    return run


def bench_model(name: str, dataset: LabeledImages, args: argparse.Namespace, cache_dir: Path) -> dict:
    model, preprocess = build_model(name)
    device = resolve_device(args.device)
    common = dict(batch_size=args.batch_size, num_workers=args.workers, device=device,
                  precision=args.precision, progress=False)
    n = len(dataset)
    decoding = Evaluator([dataset], preprocess, **common)
    cached = Evaluator([dataset], preprocess, cache_dir=str(cache_dir / name), **common)
    run_model = model_alone(model, decoding, n, args.batch_size)

    t_decode, decoded_accuracy = timed(lambda: decoding.evaluate({"m": model}), device)
    t_build, _ = timed(lambda: cached.source("Bench"), device)
    t_model = t_cache = float("inf")
    for _ in range(args.repeats):  # interleaved, best of each: robust to load from other jobs
        seconds, cached_accuracy = timed(lambda: cached.evaluate({"m": model}), device)
        t_cache = min(t_cache, seconds)
        t_model = min(t_model, timed(run_model, device)[0])
        assert cached_accuracy == decoded_accuracy, "the cache changed the accuracy"
    result = {
        "model": name,
        "images": n,
        "a_decode_img_s": n / t_decode,
        "b_cache_img_s": n / t_cache,
        "c_model_img_s": n / t_model,
        "cache_build_s": t_build,
        "cache_bytes": cached.source("Bench").nbytes,
    }
    result["b_over_c"] = result["b_cache_img_s"] / result["c_model_img_s"]
    result["b_over_a"] = result["b_cache_img_s"] / result["a_decode_img_s"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000, help="number of generated JPEGs (default 2000)")
    parser.add_argument("--size", type=int, nargs=2, default=(500, 375), metavar=("W", "H"))
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=["tiny", "vit_b32"])
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--precision", default="bf16", help="bf16 autocast on CUDA; CPU runs fp32")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=8, help="JPEG-decoding DataLoader workers")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats of (b) and (c), interleaved; best is kept")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--work-dir", default=None, help="where JPEGs and the cache go (default: a temp dir)")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory(prefix="bench_eval_") as tmp:
        work = Path(args.work_dir or tmp)
        dataset = write_jpegs(work / "jpegs", args.n, tuple(args.size))
        print(f"{args.n} JPEGs of {args.size[0]}x{args.size[1]} in {work / 'jpegs'}; device "
              f"{resolve_device(args.device)}, batch {args.batch_size}, {args.workers} workers, "
              f"{torch.get_num_threads()} torch threads")
        results = []
        header = (f"{'model':<8} {'(a) decode':>12} {'(b) cache':>12} {'(c) model':>12} "
                  f"{'b/c':>6} {'b/a':>6} {'cache build':>12} {'cache size':>11}")
        print(header)
        for name in args.models:
            r = bench_model(name, dataset, args, work / "cache")
            results.append(r)
            print(f"{name:<8} {r['a_decode_img_s']:>8.0f} i/s {r['b_cache_img_s']:>8.0f} i/s "
                  f"{r['c_model_img_s']:>8.0f} i/s {r['b_over_c']:>6.2f} {r['b_over_a']:>6.2f} "
                  f"{r['cache_build_s']:>10.1f} s {r['cache_bytes'] / 2**20:>7.1f} MiB", flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps({"args": vars(args), "results": results}, indent=2))


if __name__ == "__main__":
    main()
