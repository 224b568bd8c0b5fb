#!/usr/bin/env python
"""The demo over several sweep seeds: does the paper's effect hold in each, and by how much?

Runs ``soup-exp pipeline experiment=<experiment> sweep.seed=N name=<experiment>-seedN`` for
each seed (the generated data and the pretrained start are shared, only the fine-tuning
sweep changes), then the report across them (what ``soup-exp report
name='<experiment>-seed*'`` writes, for exactly these seeds, to
``outputs/across/<experiment>-seed_/``), and checks the claims the demo makes (margins in
percentage points, > 0 passes):

  greedy_keeps_2   the greedy soup keeps at least 2 ingredients (margin: ingredients - 1.5)
  greedy_heldout   greedy soup - best individual on held-out (the criterion greedy optimises)
  uniform_shifts   uniform soup - best individual on Avg shifts
  finetunes_in     worst fine-tune - zero-shot on ImageNet
  greedy_in        greedy soup - best individual on ImageNet (need hold in most seeds only)

It prints the across report's mean ± standard deviation table and its claims over the
seeds (docs/demo.md has them), then each seed's margins. ``--check`` exits 1 unless the
claims hold.

    python scripts/demo_seeds.py                        # seeds 0..4, one after the other
    python scripts/demo_seeds.py --seeds 0 1 --check logger=disabled
    python scripts/demo_seeds.py --summary-only         # tables from finished runs
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from soup_exp.artifacts.results import read_results
from soup_exp.reporting.across import Across, across_dir, report_across, summary
from soup_exp.vocabulary import AVG_SHIFTS, HELD_OUT, IMAGENET

MOSTLY = {"greedy_in"}  # claims that need hold in more than half of the seeds, not in all


@dataclass(frozen=True)
class Claim:
    name: str
    margin: float
    detail: str

    @property
    def holds(self) -> bool:
        return self.margin > 0


def claims(out_dir: Path, across: Across) -> list[Claim]:
    """The demo's claims on one finished run, with their margins: the soups' gains as the
    across report computed them, the ingredients kept and the worst fine-tune from the run."""
    rows = read_results(out_dir / "results.jsonl")
    greedy_info = json.loads((out_dir / "soups" / "greedy" / "soup.json").read_text())
    finetunes = [r for r in rows if r["kind"] == "finetune"]
    worst = min(finetunes, key=lambda r: r[IMAGENET])
    zeroshot = across.line("zeroshot").cells[IMAGENET].values[out_dir.name]

    def gain(base: str, compared: str, metric: str) -> float:
        return across.claim(base, compared, metric).gain.values[out_dir.name]

    kept = greedy_info["num_ingredients"]
    worst_gain = 100 * worst[IMAGENET] - zeroshot
    margins = {"greedy_heldout": gain("best_individual", "greedy", HELD_OUT),
               "uniform_shifts": gain("best_individual", "uniform", AVG_SHIFTS),
               "greedy_in": gain("best_individual", "greedy", IMAGENET)}
    return [
        Claim("greedy_keeps_2", kept - 1.5, f"{kept} of {len(finetunes) + 1}"),
        Claim("greedy_heldout", margins["greedy_heldout"], f"{margins['greedy_heldout']:+.2f}"),
        Claim("uniform_shifts", margins["uniform_shifts"], f"{margins['uniform_shifts']:+.2f}"),
        Claim("finetunes_in", worst_gain, f"{worst_gain:+.2f} ({worst['name']})"),
        Claim("greedy_in", margins["greedy_in"], f"{margins['greedy_in']:+.2f}"),
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
    report_dir = across_dir(output_root(), f"{args.experiment}-seed*")
    across, _ = report_across({out.name: out / "results.jsonl" for out in runs.values()}, report_dir)
    per_seed = {seed: claims(out, across) for seed, out in runs.items()}
    failed = failures(per_seed)
    print(f"\n{args.experiment}, sweep seeds {args.seeds}: the report across them ({report_dir})\n")
    print(summary(across))
    print("Margins in points (greedy_keeps_2: ingredients kept of those in the pool)\n")
    print(claims_table(per_seed))
    print("\n" + ("the claims hold" if not failed else "the claims do NOT hold:\n  " + "\n  ".join(failed)))
    if args.json:
        args.json.write_text(json.dumps({
            "experiment": args.experiment, "failures": failed, "seconds": seconds,
            "claims": {seed: [asdict(c) for c in cs] for seed, cs in per_seed.items()}}, indent=2))
    return 1 if failed and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
