"""`soup-exp <stage> [hydra overrides]`: one command for every stage.

Each stage is also a module (`python -m soup_exp.<stage>`); this dispatcher only picks the
module and hands the remaining arguments to its Hydra entry point untouched. Commands that
only read an experiment (``runs``) are modules with a plain ``main(argv)``, no Hydra app.
"""

from __future__ import annotations

import importlib
import sys

from soup_exp.stages.entry import STAGES, available_options
from soup_exp.stages.stage_help import stage_help, wants_help

# command -> (summary, module whose ``main(argv)`` takes the remaining arguments)
COMMANDS: dict[str, tuple[str, str]] = {
    "runs": ("what each stage's W&B run logged (config, summary, history), from the offline files",
             "soup_exp.runs"),
}


def usage() -> str:
    lines = ["usage: soup-exp <stage> [--config-dir DIR] [--dry-run] [hydra overrides]", "", "stages:"]
    lines += [f"  {name:<10} {stage.summary}" for name, stage in STAGES.items()]
    lines += ["", "commands:"]
    lines += [f"  {name:<10} {summary}" for name, (summary, _) in COMMANDS.items()]
    lines += [
        "",
        f"experiments: {', '.join(available_options('experiment'))}",
        f"recipes:     {', '.join(available_options('recipes'))}",
        f"analyses:    {', '.join(available_options('analyses'))}",
        "",
        "examples:",
        "  soup-exp pipeline experiment=demo",
        "  soup-exp pipeline experiment=demo --dry-run      # what it would do; writes nothing",
        "  soup-exp finetune -m sweep=paper_vitb32 'sweep.index=range(71)' launcher=slurm",
        "  soup-exp soup 'recipes=[uniform,greedy]'",
        "  soup-exp analyze 'analyses=[landscape,angles]'",
        "  soup-exp report results=outputs/demo/results.jsonl compare=paper_vitb32",
        "  soup-exp report results=paper_vitb32             # the authors' published numbers",
        "  soup-exp runs experiment=demo                    # the W&B runs the stages wrote",
        "",
        "`soup-exp <stage> --help` says what a stage does, its main options and examples; `--cfg job`",
        "prints its whole configuration. --config-dir adds your",
        "own configs (experiments, recipes, analyses, datasets, models), searched before the packaged ones.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help", "help"}:
        print(usage())
        return
    stage, rest = argv[0], argv[1:]
    if stage in COMMANDS:
        importlib.import_module(COMMANDS[stage][1]).main(rest)
        return
    if stage not in STAGES:
        print(f"soup-exp: unknown stage {stage!r}; choose one of: {', '.join([*STAGES, *COMMANDS])}",
              file=sys.stderr)
        sys.exit(2)
    if wants_help(rest):  # before the stage's module is imported: help needs neither torch nor Hydra
        print(stage_help(stage))
        return
    module = importlib.import_module(STAGES[stage].module)
    sys.argv = [f"soup-exp {stage}", *rest]
    module.main()


if __name__ == "__main__":
    main()
