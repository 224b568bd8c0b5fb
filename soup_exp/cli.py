"""`soup-exp <stage> [hydra overrides]`: one command for every stage.

Each stage is also a module (`python -m soup_exp.<stage>`); this dispatcher only picks
the module, checks the experiment name early (so a typo gets the list of experiments
rather than a Hydra traceback) and hands the remaining arguments to Hydra untouched.
"""

from __future__ import annotations

import importlib
import sys

from soup_exp.utils.entry import CONFIG_DIR, STAGES


def usage() -> str:
    lines = ["usage: soup-exp <stage> [hydra overrides]", "", "stages:"]
    lines += [f"  {name:<10} {stage.summary}" for name, stage in STAGES.items()]
    lines += [
        "",
        f"experiments: {', '.join(available_experiments())}",
        "",
        "examples:",
        "  soup-exp pipeline experiment=demo",
        "  soup-exp finetune -m sweep=paper_vitb32 'sweep.index=range(71)' launcher=slurm",
        "  soup-exp report results=outputs/demo/results.jsonl compare=paper_vitb32",
        "",
        "`soup-exp <stage> --help` shows that stage's configuration (Hydra).",
    ]
    return "\n".join(lines)


def available_experiments() -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))


def unknown_experiment(args: list[str]) -> str | None:
    """The experiment named in the overrides if no config file defines it."""
    known = set(available_experiments())
    for arg in args:
        key, sep, value = arg.partition("=")
        if sep and key.lstrip("+~") == "experiment":
            for name in value.split(","):
                if name and name not in known:
                    return name
    return None


def exit_on_unknown_experiment(args: list[str]) -> None:
    if (name := unknown_experiment(args)) is not None:
        print(
            f"soup-exp: unknown experiment {name!r}; available: {', '.join(available_experiments())} "
            f"(files in {CONFIG_DIR / 'experiment'})",
            file=sys.stderr,
        )
        sys.exit(2)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help", "help"}:
        print(usage())
        return
    stage, rest = argv[0], argv[1:]
    if stage not in STAGES:
        print(f"soup-exp: unknown stage {stage!r}; choose one of: {', '.join(STAGES)}", file=sys.stderr)
        sys.exit(2)
    module = importlib.import_module(STAGES[stage].module)
    sys.argv = [f"soup-exp {stage}", *rest]
    module.main()


if __name__ == "__main__":
    main()
