"""Benchmark the soup recipes against the limits of the machine they run on.

For N ingredients shaped like an open_clip image classifier (default ViT-B/32 + a
1000-way head), measured in fresh subprocesses so each peak RSS is its own:
  * uniform soup wall time vs a raw sequential read of the same files, cold (page cache
    dropped, needs root) and warm; targets <= 1.3x cold (disk-bound), <= 4x warm;
  * uniform soup peak RSS (above the process's RSS after imports) vs one ingredient's
    size, target <= 2.5x; greedy soup peak RSS, target <= 3.5x;
  * learned soup step time for N=8 vs one plain forward+backward of one model at the
    same batch, target <= 3x;
  * peak RSS of the per-tensor merges (uniform, Model Stock and the kernel recipes: task
    arithmetic, TIES, DARE) at each --merge-n vs one ingredient's size, target <= 2.5x, and
    its growth from the smallest to the largest N, target <= 0.25 ingredient (O(1) in N).

    python scripts/bench_soup.py                       # 16 x ViT-B/32, in /tmp/soup-bench
    python scripts/bench_soup.py --n 4 --model soup-tiny-vit --classes 10   # quick check
    python scripts/bench_soup.py --n 8 --batch 256 --device cuda --skip cold uniform greedy \
        --placements auto pinned_host   # the learned step on a GPU, stacks on it and in pinned host memory
    python scripts/bench_soup.py --skip cold uniform greedy learned --merge-n 4 8 16   # merges' memory vs N
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

LIMITS = {"uniform_cold": 1.3, "uniform_warm": 4.0, "uniform_rss": 2.5, "greedy_rss": 3.5, "learned_step": 3.0,
          "merge_rss": 2.5, "merge_growth": 0.25}
MERGES = ["uniform", "model_stock", "task_arithmetic", "ties_merging", "dare"]


def _status_mib(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def rss_now_mib() -> float:
    return _status_mib("VmRSS")


def reset_peak_rss() -> None:
    """Start the high-water mark afresh (getrusage's maxrss survives exec, VmHWM does not)."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5\n")


def peak_rss_mib() -> float:
    return max(_status_mib("VmHWM"), rss_now_mib())


def build_skeleton(model: str, classes: int):
    import open_clip
    import torch

    import soup_exp.models  # noqa: F401  registers the project's model configs
    from soup_exp.models import ImageClassifier

    clip = open_clip.create_model(model, pretrained=None)
    head = torch.nn.Linear(clip.visual.output_dim, classes)
    return ImageClassifier(clip.visual, head), clip.visual.image_size


def files_of(args) -> list[Path]:
    return [Path(args.dir) / f"ingredient_{i:03d}.safetensors" for i in range(args.n)]


def base_file(args) -> Path:
    """The model the task vectors are taken from (the LP init or zero-shot model of a real pool)."""
    return Path(args.dir) / "base.safetensors"


def make_ingredients(args) -> None:
    import torch
    from safetensors.torch import save_file

    manifest = Path(args.dir) / "manifest.json"
    want = {"n": args.n, "model": args.model, "classes": args.classes, "dtype": args.dtype}
    if manifest.is_file() and json.loads(manifest.read_text()) == want and base_file(args).is_file():
        return
    Path(args.dir).mkdir(parents=True, exist_ok=True)
    skeleton, _ = build_skeleton(args.model, args.classes)
    shapes = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    dtype = getattr(torch, args.dtype)
    for i, path in enumerate([*files_of(args), base_file(args)]):
        g = torch.Generator().manual_seed(i)
        save_file({k: (0.02 * torch.randn(s, generator=g)).to(dtype) for k, s in shapes.items()}, str(path))
        print(f"  wrote {path} ({path.stat().st_size / 2**20:.0f} MiB)", flush=True)
    manifest.write_text(json.dumps(want))


def drop_caches() -> bool:
    try:
        subprocess.run(["sync"], check=True)
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


# ---- workers (each runs in its own process) -------------------------------------------------

def work_raw(args) -> dict:
    buffer = bytearray(16 << 20)
    view = memoryview(buffer)
    start, total = time.perf_counter(), 0
    for path in files_of(args):
        with open(path, "rb", buffering=0) as f:
            while n := f.readinto(view):
                total += n
    return {"seconds": time.perf_counter() - start, "bytes": total}


def work_raw_mmap(args) -> dict:
    """The other way to read a file: map it and touch every page (what safe_open does)."""
    import mmap

    import torch

    torch.set_num_threads(args.threads)
    start, total = time.perf_counter(), 0
    for path in files_of(args):
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            view = torch.frombuffer(mapped, dtype=torch.uint8)
            view.max()
            total += view.numel()
            del view
    return {"seconds": time.perf_counter() - start, "bytes": total}


def work_uniform(args) -> dict:
    import torch

    from soup_exp.soups import uniform_soup

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    soup = uniform_soup(files_of(args), prefetch=not args.no_prefetch, arithmetic=args.arithmetic)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "tensors": len(soup)}


def work_greedy(args) -> dict:
    import torch

    from soup_exp.soups import greedy_soup

    torch.set_num_threads(args.threads)
    skeleton, size = build_skeleton(args.model, args.classes)
    skeleton.eval()
    images = torch.randn(2, 3, *(size if isinstance(size, tuple) else (size, size)))
    scores = [0.5 + 0.01 * ((7 * i) % len(files_of(args))) for i in range(args.n)]

    def evaluate(state_dict) -> float:  # what Evaluator.heldout_accuracy_fn does, on 2 images
        skeleton.load_state_dict(state_dict, strict=True)
        with torch.inference_mode():
            return float(skeleton(images).float().std())

    start = time.perf_counter()
    result = greedy_soup(files_of(args), scores, evaluate, candidate_buffer=skeleton.state_dict(),
                         arithmetic=args.arithmetic)
    return {"seconds": time.perf_counter() - start, "kept": len(result.chosen)}


def work_learned(args) -> dict:
    import torch

    from soup_exp.soups import learned, learned_soup

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.placement == "pinned_host":  # as if the stacks did not fit on the device
        learned.DEVICE_MEMORY_FRACTION = 0.0
    skeleton, size = build_skeleton(args.model, args.classes)
    skeleton.to(device)
    hw = size if isinstance(size, tuple) else (size, size)
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(args.batch, 3, *hw, generator=g).to(device),
                torch.randint(0, args.classes, (args.batch,), generator=g).to(device))
               for _ in range(args.steps + 1)]

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    # plain forward + backward of one model at the same batch
    skeleton.train(False)
    for p in skeleton.parameters():
        p.requires_grad_(True)
    plain = []
    for images, targets in batches:
        sync()
        t0 = time.perf_counter()
        skeleton.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(skeleton(images), targets).backward()
        sync()
        plain.append(time.perf_counter() - t0)
    skeleton.zero_grad(set_to_none=True)

    stamps: list[float] = []  # on_step reads the loss, which waits for the device
    result = learned_soup(files_of(args)[: args.learned_n], skeleton, batches, mode="by_layer", epochs=1,
                          device=device, on_step=lambda point: stamps.append(time.perf_counter()))
    steps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    out = {"plain_step": min(plain[1:]), "learned_step": min(steps), "steps": len(steps),
           "placement": result.placement}
    if device.type == "cuda":
        out["peak_gpu_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return out


def work_merge(args) -> dict:
    """One merge of the first ``--merge-size`` ingredients, configured as its recipe's YAML."""
    import torch
    from hydra.utils import get_object
    from omegaconf import OmegaConf

    from soup_exp.soups import merge_tensors, uniform_soup
    from soup_exp.soups.kernels import Kernel
    from soup_exp.soups.model_stock import model_stock_soup
    from soup_exp.stages.entry import packaged_config_dir

    torch.set_num_threads(args.threads)
    files = files_of(args)[: args.merge_size]
    start = time.perf_counter()
    if args.merge == "uniform":
        soup = uniform_soup(files, arithmetic=args.arithmetic)
    elif args.merge == "model_stock":
        soup = model_stock_soup(files, base_file(args)).state_dict
    else:
        recipe = OmegaConf.to_container(OmegaConf.load(packaged_config_dir() / "recipes" / f"{args.merge}.yaml"))
        target = get_object(recipe.pop("_target_"))
        if not isinstance(target, Kernel):
            raise SystemExit(f"recipe {args.merge} is not a per-tensor kernel")
        params = {k: v for k, v in recipe.items() if k not in ("label", "base")}
        soup = merge_tensors(files, target.fn, base=base_file(args), params=params)
    return {"seconds": time.perf_counter() - start, "tensors": len(soup)}


WORKERS = {"raw": work_raw, "raw_mmap": work_raw_mmap, "uniform": work_uniform, "greedy": work_greedy, "learned": work_learned,
           "merge": work_merge}


def run_worker(args) -> None:
    import open_clip  # noqa: F401  the baseline includes the libraries every worker imports
    import torch  # noqa: F401

    import soup_exp.models  # noqa: F401
    import soup_exp.soups  # noqa: F401

    reset_peak_rss()
    base = rss_now_mib()
    out = WORKERS[args.worker](args)
    out.update(base_rss_mib=base, peak_rss_mib=peak_rss_mib())
    print("RESULT " + json.dumps(out), flush=True)


def measure(args, worker: str, cold: bool = False, extra: tuple[str, ...] = ()) -> dict:
    if cold and not drop_caches():
        return {"skipped": "cannot drop the page cache (not root?)"}
    cmd = [sys.executable, __file__, *sys.argv[1:], "--worker", worker, *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise RuntimeError(f"worker {worker} failed:\n{proc.stdout}\n{proc.stderr}")
    return json.loads(lines[-1][len("RESULT "):])


def fastest_raw(args, cold: bool) -> dict:
    """The limit: the faster of a plain sequential read and a mapped read of the files."""
    results = []
    for worker in ("raw", "raw_mmap"):
        result = measure(args, worker, cold=cold)
        if "skipped" in result:
            return result
        results.append({**result, "how": "read()" if worker == "raw" else "mmap"})
    return min(results, key=lambda r: r["seconds"])


def verdict(value: float, limit: float) -> str:
    return f"{value:.2f}x (limit {limit}x: {'ok' if value <= limit else 'OVER'})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=16, help="number of ingredients")
    parser.add_argument("--model", default="ViT-B-32", help="open_clip architecture whose image tower shapes the ingredients")
    parser.add_argument("--classes", type=int, default=1000, help="classifier head size")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--dir", default="/tmp/soup-bench", help="where the ingredient files are written")
    parser.add_argument("--learned-n", type=int, default=8, help="ingredients in the learned-soup step benchmark")
    parser.add_argument("--batch", type=int, default=16, help="batch size of the learned-soup step")
    parser.add_argument("--steps", type=int, default=3, help="timed learned / plain steps (min is reported)")
    parser.add_argument("--threads", type=int, default=max(1, os.cpu_count() or 1))
    parser.add_argument("--no-prefetch", action="store_true", help="uniform soup without the read-ahead thread")
    parser.add_argument("--arithmetic", default="sum", choices=["sum", "authors"], help="soup arithmetic (the paper preset: authors)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["cold", "uniform", "greedy", "learned"],
                        help="uniform: the warm uniform timing and its peak RSS (cold needs its own skip)")
    parser.add_argument("--device", default="cpu", help="where the learned-soup step runs (cpu | cuda | cuda:N)")
    parser.add_argument("--placements", nargs="+", default=["auto"], choices=["auto", "pinned_host"],
                        help="learned step: where the stacked ingredients live (auto: the device when they fit)")
    parser.add_argument("--placement", default="auto", help=argparse.SUPPRESS)
    parser.add_argument("--merge-n", type=int, nargs="*", default=[],
                        help="pool sizes at which the per-tensor merges' peak RSS is measured (each <= --n)")
    parser.add_argument("--merges", nargs="+", default=MERGES, help="the merges measured at each --merge-n")
    parser.add_argument("--merge", help=argparse.SUPPRESS)
    parser.add_argument("--merge-size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--json", default=None, help="also write the rows and the raw measurements here")
    parser.add_argument("--worker", choices=list(WORKERS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return run_worker(args)
    if any(n > args.n for n in args.merge_n):
        parser.error(f"--merge-n: every size must be at most --n ({args.n})")
    if args.device == "cpu" and "pinned_host" in args.placements:
        parser.error("--placements pinned_host needs a CUDA --device (on CPU the stacks are in host memory anyway)")

    print(f"ingredients: {args.n} x {args.model} + {args.classes}-way head ({args.dtype}) in {args.dir}; "
          f"arithmetic {args.arithmetic}", flush=True)
    make_ingredients(args)
    one = files_of(args)[0].stat().st_size / 2**20
    print(f"one ingredient: {one:.0f} MiB; all: {one * args.n / 1024:.2f} GiB; threads: {args.threads}")
    rows, raw = [], {}
    if "cold" not in args.skip:
        raw_c = fastest_raw(args, cold=True)
        uni_c = measure(args, "uniform", cold=True)
        raw.update(raw_cold=raw_c, uniform_cold=uni_c)
        if "skipped" in raw_c:
            print("cold: skipped,", raw_c["skipped"])
        else:
            ratio = uni_c["seconds"] / raw_c["seconds"]
            rows.append(("uniform cold vs raw read", f"{uni_c['seconds']:.2f}s vs {raw_c['seconds']:.2f}s "
                         f"({raw_c['bytes'] / 2**20 / raw_c['seconds']:.0f} MiB/s, {raw_c['how']})",
                         verdict(ratio, LIMITS["uniform_cold"])))
    if "uniform" not in args.skip:
        measure(args, "raw")  # warm the page cache
        raw_w, uni_w = fastest_raw(args, cold=False), measure(args, "uniform")
        raw.update(raw_warm=raw_w, uniform_warm=uni_w)
        rows.append(("uniform warm vs raw read", f"{uni_w['seconds']:.2f}s vs {raw_w['seconds']:.2f}s ({raw_w['how']})",
                     verdict(uni_w["seconds"] / raw_w["seconds"], LIMITS["uniform_warm"])))
        rss = uni_w["peak_rss_mib"] - uni_w["base_rss_mib"]
        rows.append(("uniform peak RSS vs one ingredient", f"+{rss:.0f} MiB over {uni_w['base_rss_mib']:.0f} MiB after imports",
                     verdict(rss / one, LIMITS["uniform_rss"])))
    if "greedy" not in args.skip:
        gr = raw["greedy"] = measure(args, "greedy")
        rss = gr["peak_rss_mib"] - gr["base_rss_mib"]
        rows.append(("greedy peak RSS vs one ingredient", f"+{rss:.0f} MiB ({gr['seconds']:.1f}s, kept {gr['kept']}; "
                     "includes the evaluation skeleton)", verdict(rss / one, LIMITS["greedy_rss"])))
    for placement in args.placements if "learned" not in args.skip else ():
        le = raw[f"learned_{placement}"] = measure(args, "learned", extra=("--placement", placement))
        where = "" if args.device == "cpu" else f", {args.device}, stacks on {le['placement']}"
        rows.append((f"learned step (N={args.learned_n}, batch {args.batch}{where}) vs plain fwd+bwd",
                     f"{le['learned_step']:.3f}s vs {le['plain_step']:.3f}s",
                     verdict(le["learned_step"] / le["plain_step"], LIMITS["learned_step"])))
    for merge in args.merges if args.merge_n else ():
        peaks = {}
        for size in sorted(args.merge_n):
            result = raw[f"merge_{merge}_{size}"] = measure(args, "merge", extra=("--merge", merge, "--merge-size", str(size)))
            peaks[size] = result["peak_rss_mib"] - result["base_rss_mib"]
            rows.append((f"{merge} peak RSS vs one ingredient (N={size})",
                         f"+{peaks[size]:.0f} MiB ({result['seconds']:.1f}s)", verdict(peaks[size] / one, LIMITS["merge_rss"])))
        if len(peaks) > 1:
            low, high = min(peaks), max(peaks)
            rows.append((f"{merge} peak RSS growth from N={low} to N={high}, in ingredients",
                         f"{peaks[high] - peaks[low]:+.0f} MiB",
                         verdict(max(peaks[high] - peaks[low], 0.0) / one, LIMITS["merge_growth"])))
    print()
    print("| measure | figures | ratio |")
    print("|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": {k: v for k, v in vars(args).items() if k not in ("worker", "placement")},
                                               "rows": rows, "raw": raw}, indent=2) + "\n")


if __name__ == "__main__":
    main()
