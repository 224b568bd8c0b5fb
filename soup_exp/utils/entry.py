"""The stage registry and the thin Hydra entry point every stage module exposes."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from soup_exp.utils.experiment import run_stage

CONFIG_DIR = Path(__file__).resolve().parents[2] / "conf"


@dataclass(frozen=True)
class Stage:
    name: str
    summary: str
    target: str  # "module:function" taking the composed DictConfig
    claims_output: bool = True  # writes into the experiment's output directory
    module: str = ""  # the module `python -m` runs; soup_exp.<name> unless a package clashes

    def __post_init__(self) -> None:
        if not self.module:
            object.__setattr__(self, "module", f"soup_exp.{self.name}")

    def function(self) -> Callable[[DictConfig], Any]:
        module, _, function = self.target.partition(":")
        return getattr(importlib.import_module(module), function)


STAGES: dict[str, Stage] = {
    s.name: s
    for s in [
        Stage("import", "the authors' released checkpoints (model_<i>.pt) as ingredients, offline",
              "soup_exp.import_release:run_import", module="soup_exp.import_release"),
        Stage("finetune", "fine-tune one ingredient (zero-shot, LP init or end-to-end); -m for sweeps",
              "soup_exp.train.finetune:run_finetune"),
        Stage("soup", "cook uniform, greedy and learned soups and the baselines from ingredients",
              "soup_exp.soups.stage:run_soups"),
        Stage("evaluate", "evaluate models on held-out, ImageNet and the five shifts -> results.jsonl",
              "soup_exp.eval.stage:run_evaluate"),
        Stage("report", "the paper's table and figures from results files (and the published numbers)",
              "soup_exp.report.stage:run_report", claims_output=False,
              module="soup_exp.report.__main__"),
        Stage("pipeline", "all stages in order for one experiment (e.g. experiment=demo)",
              "soup_exp.pipeline:run_pipeline"),
    ]
}


def stage_entry(name: str) -> Callable[[], None]:
    """``main()`` for `python -m soup_exp.<name>`: compose ``conf/<name>.yaml`` and run
    the stage's function (imported lazily, so `--help` stays fast)."""
    stage = STAGES[name]

    @hydra.main(config_path=str(CONFIG_DIR), config_name=name, version_base="1.3")
    def _main(cfg: DictConfig) -> Any:
        claim = stage.claims_output and not cfg.get("check_data", False)
        return run_stage(cfg, stage.function(), claim=claim)

    def main() -> None:
        from soup_exp.cli import exit_on_unknown_experiment

        exit_on_unknown_experiment(sys.argv[1:])
        _main()

    return main
