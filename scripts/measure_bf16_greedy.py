#!/usr/bin/env python
"""How often does bf16 scoring change a greedy-soup decision? (the paper preset scores in fp32)

For each finished run (an output folder with ``ingredients/``), the held-out images are
read once through the project's evaluator, then the greedy soup is cooked twice by the
library's ``greedy_soup``: every candidate (and every ingredient's own score) measured in
fp32, and measured under bf16 autocast (CPU autocast here; on a GPU the stage's
``eval.precision=bf16`` does the same). A decision is one candidate's accept/reject; the
script prints how many decisions differ, whether the final soups differ, and the share
of held-out predictions bf16 flips for each ingredient.

    python scripts/measure_bf16_greedy.py outputs/demo-seed0 outputs/demo-seed1 ... experiment=demo

Overrides after the folders compose the soup stage's config (the experiment the runs
came from), so that data, model and held-out split are the ones the runs used.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch


def soup_config(out_dir: Path, overrides: Sequence[str]):
    from hydra import compose, initialize_config_dir

    from soup_exp.stages.entry import packaged_config_dir

    with initialize_config_dir(config_dir=str(packaged_config_dir()), version_base="1.3"):
        return compose(config_name="soup", overrides=[
            *overrides, f"paths.output_dir={out_dir.parent}", f"name={out_dir.name}",
            "progress=false", "logger=disabled", "device=cpu"])


class HeldOut:
    """The held-out images in memory and the skeleton model, scored in fp32 or bf16."""

    def __init__(self, cfg) -> None:
        from soup_exp.soups.ingredients import load_ingredients
        from soup_exp.stages.roles import pool_and_judge
        from soup_exp.utils.config import to_plain
        from soup_exp.vocabulary import HELD_OUT

        self.pool = pool_and_judge(cfg, load_ingredients(to_plain(cfg.soup.pool)))
        self.arithmetic = str(cfg.soup.arithmetic)
        evaluator = self.pool.judge.evaluator
        batches = list(evaluator.batches(HELD_OUT))
        self.images = torch.cat([images for images, _ in batches])
        self.targets = torch.cat([targets for _, targets in batches])
        self.project = evaluator.dataset(HELD_OUT).project
        self.model = self.pool.judge.skeleton.eval()

    @torch.inference_mode()
    def predictions(self, state_dict: Mapping[str, torch.Tensor], precision: str) -> torch.Tensor:
        self.model.load_state_dict(state_dict, strict=True)
        numerics = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
        with numerics:
            logits = torch.cat([self.model(chunk).float() for chunk in self.images.split(512)])
        return self.project(logits).argmax(dim=1)

    def accuracy(self, precision: str):
        return lambda sd: (self.predictions(sd, precision) == self.targets).float().mean().item()


def measure(out_dir: Path, overrides: Sequence[str]) -> dict:
    from soup_exp.soups.greedy import greedy_soup

    held_out = HeldOut(soup_config(out_dir, overrides))
    ingredients = held_out.pool.ingredients
    flips = {ing.name: (held_out.predictions(ing.state_dict(), "fp32")
                        != held_out.predictions(ing.state_dict(), "bf16")).float().mean().item()
             for ing in ingredients}
    runs = {}
    for precision in ("fp32", "bf16"):
        evaluate = held_out.accuracy(precision)
        scores = [evaluate(ing.state_dict()) for ing in ingredients]
        result = greedy_soup(ingredients, scores, evaluate, arithmetic=held_out.arithmetic)
        runs[precision] = {"decisions": {h["name"]: h["accepted"] for h in result.history[1:]},
                           "chosen": result.chosen_names, "accuracy": result.accuracy}
    fp32, bf16 = runs["fp32"], runs["bf16"]
    changed = sorted(n for n in fp32["decisions"] if fp32["decisions"][n] != bf16["decisions"].get(n))
    return {"run": str(out_dir), "images": len(held_out.targets), "decisions": len(fp32["decisions"]),
            "changed": changed, "same_soup": sorted(fp32["chosen"]) == sorted(bf16["chosen"]),
            "fp32": fp32, "bf16": bf16, "max_prediction_flips": max(flips.values())}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="output folders, then Hydra overrides (key=value)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    folders = [Path(a) for a in args.runs if "=" not in a]
    overrides = [a for a in args.runs if "=" in a]
    found = [measure(folder.resolve(), overrides) for folder in folders]
    for m in found:
        print(f"{m['run']}: {len(m['changed'])} of {m['decisions']} greedy decisions differ in bf16 "
              f"({', '.join(m['changed']) or 'none'}); same soup: {m['same_soup']}; "
              f"held-out {100 * m['fp32']['accuracy']:.2f} (fp32) vs {100 * m['bf16']['accuracy']:.2f} (bf16); "
              f"at most {100 * m['max_prediction_flips']:.2f} % of {m['images']} predictions flip per ingredient")
    total = sum(m["decisions"] for m in found)
    print(f"in all: {sum(len(m['changed']) for m in found)} of {total} decisions differ, "
          f"{sum(not m['same_soup'] for m in found)} of {len(found)} soups differ")
    if args.json:
        args.json.write_text(json.dumps(found, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
