#!/usr/bin/env python
"""The demo over several sweep seeds: does the paper's effect hold in each, and by how much?

Runs ``soup-exp pipeline experiment=<experiment> sweep.seed=N name=<experiment>-seedN`` for
each seed (the generated data and the pretrained start are shared, only the fine-tuning
sweep changes), reads each run's table the way the report builds it, and checks the claims
the demo makes (margins in percentage points, > 0 passes):

  greedy_keeps_2   the greedy soup keeps at least 2 ingredients (margin: ingredients - 1.5)
  greedy_heldout   greedy soup - best individual on held-out (the criterion greedy optimises)
  uniform_shifts   uniform soup - best individual on Avg shifts
  finetunes_in     worst fine-tune - zero-shot on ImageNet
  greedy_in        greedy soup - best individual on ImageNet (need hold in most seeds only)

It prints a mean ± standard deviation table over the seeds (docs/demo.md has one) and each
seed's margins. ``--check`` exits 1 unless the claims hold.

    python scripts/demo_seeds.py                        # seeds 0..4, one after the other
    python scripts/demo_seeds.py --seeds 0 1 --check logger=disabled
    python scripts/demo_seeds.py --summary-only         # tables from finished runs
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from soup_exp.artifacts.results import read_results
from soup_exp.reporting.table import Table, build_table

MOSTLY = {"greedy_in"}  # claims that need hold in more than half of the seeds, not in all


@dataclass(frozen=True)
class Claim:
    name: str
    margin: float
    detail: str

    @property
    def holds(self) -> bool:
        return self.margin > 0


def seed_table(out_dir: Path) -> Table:
    return build_table(read_results(out_dir / "results.jsonl"))


def claims(out_dir: Path) -> list[Claim]:
    """The demo's claims on one finished run, with their margins."""
    rows = read_results(out_dir / "results.jsonl")
    table = build_table(rows)
    best, greedy, uniform, zeroshot = (table.row(s).values for s in ("best_individual", "greedy", "uniform", "zeroshot"))
    greedy_info = json.loads((out_dir / "soups" / "greedy" / "soup.json").read_text())
    finetunes = [r for r in rows if r["kind"] == "finetune"]
    worst = min(finetunes, key=lambda r: r["ImageNet"])

    def points(a, b, key: str) -> float:
        return 100 * (a[key] - b[key])

    kept = greedy_info["num_ingredients"]
    return [
        Claim("greedy_keeps_2", kept - 1.5, f"{kept} of {len(finetunes) + 1}"),
        Claim("greedy_heldout", points(greedy, best, "ImageNet2p"), f"{points(greedy, best, 'ImageNet2p'):+.2f}"),
        Claim("uniform_shifts", points(uniform, best, "avg_shifts"), f"{points(uniform, best, 'avg_shifts'):+.2f}"),
        Claim("finetunes_in", points(worst, zeroshot, "ImageNet"),
              f"{points(worst, zeroshot, 'ImageNet'):+.2f} ({worst['name']})"),
        Claim("greedy_in", points(greedy, best, "ImageNet"), f"{points(greedy, best, 'ImageNet'):+.2f}"),
    ]


def failures(per_seed: dict[int, list[Claim]]) -> list[str]:
    """Claims that do not hold: any seed for most claims, most seeds for ``MOSTLY``."""
    failed = [f"seed {seed}: {c.name} {c.detail}" for seed, cs in per_seed.items()
              for c in cs if not c.holds and c.name not in MOSTLY]
    for name in MOSTLY:
        held = sum(c.holds for cs in per_seed.values() for c in cs if c.name == name)
        if 2 * held <= len(per_seed):
            failed.append(f"{name} holds in {held} of {len(per_seed)} seeds, not most")
    return failed


def mean_table(tables: Sequence[Table]) -> str:
    """Markdown: each method's mean ± standard deviation over the seeds."""
    columns = tables[0].columns
    lines = ["| Method | " + " | ".join(label for _, label in columns) + " |",
             "| --- |" + " ---: |" * len(columns)]
    for row in tables[0].rows:
        same = [t.row(row.slot) for t in tables]
        if any(r is None for r in same):
            continue
        label = row.label.split(" (")[0]
        cells = []
        for key, _ in columns:
            values = [100 * r.values[key] for r in same if r.values.get(key) is not None]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.fmean(values):.2f} ± {spread:.2f}" if values else "–")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def claims_table(per_seed: dict[int, list[Claim]]) -> str:
    names = [c.name for c in next(iter(per_seed.values()))]
    lines = ["| Seed | " + " | ".join(names) + " |", "| ---: |" + " --- |" * len(names)]
    lines += [f"| {seed} | " + " | ".join(("" if c.holds else "FAIL ") + c.detail for c in cs) + " |"
              for seed, cs in per_seed.items()]
    return "\n".join(lines)


def output_root() -> Path:
    """Where the pipeline writes (``paths.output_dir``'s default)."""
    if os.environ.get("SOUP_OUTPUT_DIR"):
        return Path(os.environ["SOUP_OUTPUT_DIR"])
    return Path(os.environ.get("SOUP_ROOT", os.getcwd())) / "outputs"


def run_seed(experiment: str, seed: int, overrides: Sequence[str]) -> float:
    """One pipeline; returns its wall seconds. Its output goes to a log beside the run."""
    name = f"{experiment}-seed{seed}"
    log = output_root() / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "soup_exp.cli", "pipeline", f"experiment={experiment}",
               f"sweep.seed={seed}", f"name={name}", *overrides]
    print("$", " ".join(command), f"> {log}", flush=True)
    start = time.perf_counter()
    with open(log, "w") as out:
        code = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT).returncode
    if code != 0:
        sys.exit(f"seed {seed} failed (exit {code}); its log: {log}\n{log.read_text()[-4000:]}")
    seconds = time.perf_counter() - start
    print(f"seed {seed}: {seconds:.0f} s", flush=True)
    return seconds


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--experiment", default="demo")
    parser.add_argument("--summary-only", action="store_true", help="only read finished runs")
    parser.add_argument("--check", action="store_true", help="exit 1 unless the claims hold")
    parser.add_argument("--json", type=Path, help="write each seed's margins and wall seconds here")
    parser.add_argument("overrides", nargs="*", help="more Hydra overrides for every pipeline")
    args = parser.parse_args(argv)

    seconds = {} if args.summary_only else {s: run_seed(args.experiment, s, args.overrides) for s in args.seeds}
    runs = {seed: output_root() / f"{args.experiment}-seed{seed}" for seed in args.seeds}
    per_seed = {seed: claims(out) for seed, out in runs.items()}
    failed = failures(per_seed)
    print(f"\n{args.experiment}, sweep seeds {args.seeds}: mean ± standard deviation (%)\n")
    print(mean_table([seed_table(out) for out in runs.values()]))
    print("\nMargins in points (greedy_keeps_2: ingredients kept of those in the pool)\n")
    print(claims_table(per_seed))
    print("\n" + ("the claims hold" if not failed else "the claims do NOT hold:\n  " + "\n  ".join(failed)))
    if args.json:
        args.json.write_text(json.dumps({
            "experiment": args.experiment, "failures": failed, "seconds": seconds,
            "claims": {seed: [asdict(c) for c in cs] for seed, cs in per_seed.items()}}, indent=2))
    return 1 if failed and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
