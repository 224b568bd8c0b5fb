"""The stage registry and the Hydra entry point every stage module exposes.

The config tree ships inside the package (``soup_exp.conf``, mapped from the repository's
top-level ``conf/``), so an installed wheel runs every stage. A user's ``--config-dir``
becomes Hydra's primary config directory and the packaged tree is searched after it, so a
user's file shadows a packaged one of the same name and adds to its groups. Overrides of
secret-named keys (``+hf_token=...``) are taken off the command line before Hydra parses
it and set on the composed config (:mod:`soup_exp.utils.config`), so they reach no file.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from soup_exp.errors import ConfigError

CONFIG_PACKAGE = "soup_exp.conf"


@cache
def packaged_config_dir() -> Path:
    """The directory of the packaged config tree (site-packages, or the checkout's conf/)."""
    spec = importlib.util.find_spec(CONFIG_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"the packaged configs ({CONFIG_PACKAGE}) are missing from this installation")
    return Path(next(iter(spec.submodule_search_locations)))


@dataclass(frozen=True)
class Stage:
    name: str
    summary: str
    module: str  # `python -m <module>` runs the stage; the module defines `function`
    function: str
    claims_output: bool = True  # writes into the experiment's output directory
    # module functions ``(cfg, overrides)``: checks before anything is created (raise a
    # SoupExpError), and a dry run's plan (soup_exp.stages.preflight.Plan)
    check: str | None = None
    plan: str | None = None
    # module function ``(cfg) -> Path``: the directory one job writes, so a multirun whose
    # jobs would write the same one is refused before it starts
    output: str | None = None
    # module function ``(cfg) -> Path | None``: that output when this job's work is already
    # done (a launcher then does not submit it)
    finished: str | None = None

    def run(self) -> Callable[..., Any]:
        return getattr(importlib.import_module(self.module), self.function)

    def hook(self, kind: str) -> Callable[..., Any] | None:
        """The stage's ``check``, ``plan``, ``output`` or ``finished`` function, None when it has none."""
        name = getattr(self, kind)
        return getattr(importlib.import_module(self.module), name) if name else None

    def claims(self, cfg: Any) -> bool:
        """Whether this run writes into the experiment's output directory (a data check does not)."""
        return self.claims_output and not cfg.get("check_data", False)


STAGES: dict[str, Stage] = {
    s.name: s
    for s in [
        Stage("import", "the authors' released checkpoints (model_<i>.pt) as ingredients, offline",
              "soup_exp.import_release", "run_import"),
        Stage("finetune", "fine-tune one ingredient (zero-shot, LP init or end-to-end); -m for sweeps",
              "soup_exp.finetune", "run_finetune", check="check_finetune", plan="plan_finetune",
              output="job_output", finished="finished_output"),
        Stage("soup", "cook the selected recipes (soups and baselines) from a pool of ingredients",
              "soup_exp.soup", "run_soups", check="check_soups", plan="plan_soups"),
        Stage("evaluate", "evaluate models on held-out, ImageNet and the five shifts -> results.jsonl",
              "soup_exp.evaluate", "run_evaluate", check="check_evaluate", plan="plan_evaluate"),
        Stage("analyze", "ablations and analyses: error landscape, angles, number of ingredients, greedy, calibration",
              "soup_exp.analyze", "run_analyze", check="check_analyze", plan="plan_analyze"),
        Stage("report", "the paper's table and figures from results files (and the published numbers)",
              "soup_exp.report", "run_report", claims_output=False, check="check_report", plan="plan_report"),
        Stage("pipeline", "all stages in order for one experiment (e.g. experiment=demo)",
              "soup_exp.pipeline", "run_pipeline", check="check_pipeline", plan="plan_pipeline"),
    ]
}

_CONFIG_DIR_FLAGS = ("--config-dir", "-cd")
DRY_RUN_FLAG = "--dry-run"  # = the override dry_run=true
INTERRUPTED_EXIT = 130  # 128 + SIGINT, as a shell reports a Ctrl-C


def split_config_dir(args: Sequence[str]) -> tuple[Path | None, list[str]]:
    """Take Hydra's ``--config-dir DIR`` (or ``-cd DIR``, ``--config-dir=DIR``) out of ``args``."""
    rest: list[str] = []
    found: str | None = None
    items = iter(args)
    for arg in items:
        flag, eq, value = arg.partition("=")
        if flag in _CONFIG_DIR_FLAGS:
            found = value if eq else next(items, None)
            if not found:
                raise ConfigError(f"{flag} needs a directory")
        else:
            rest.append(arg)
    if found is None:
        return None, rest
    path = Path(found).expanduser().resolve()
    if not path.is_dir():
        raise ConfigError(f"--config-dir {found}: no such directory")
    return path, rest


def check_yaml_syntax(config_dir: Path) -> None:
    """Every ``*.yaml`` under a user's ``--config-dir`` parses: a broken one is one line
    naming the file and line, not Hydra's traceback (and only when it was selected)."""
    import yaml

    for path in sorted(config_dir.rglob("*.yaml")):
        try:
            for _ in yaml.compose_all(path.read_text(encoding="utf-8"), Loader=yaml.SafeLoader):
                pass
        except yaml.MarkedYAMLError as err:
            start, found = err.context_mark or err.problem_mark, err.problem_mark
            where = f", line {start.line + 1}" if start is not None else ""
            problem = err.problem or ""
            if found is not None and start is not None and found.line != start.line:
                problem += f" at line {found.line + 1}"
            what = "; ".join(m for m in (err.context, problem) if m)
            raise ConfigError(f"{path}{where}: broken YAML ({what}); fix the file") from err
        except (yaml.YAMLError, UnicodeDecodeError, OSError) as err:
            raise ConfigError(f"{path}: cannot be read as YAML ({err}); fix the file") from err


def config_dirs(user_dir: Path | None) -> list[Path]:
    """Where configs are searched, first match wins."""
    return [d for d in (user_dir, packaged_config_dir()) if d is not None]


def available_options(group: str, user_dir: Path | None = None) -> list[str]:
    return sorted({p.stem for d in config_dirs(user_dir) for p in (d / group).glob("*.yaml")})


def check_experiment(args: Sequence[str], user_dir: Path | None) -> None:
    """An unknown option of a config group (``experiment=``, ``recipes=[uniform,mine]``,
    ``model=``, ...) is one line listing the known ones, not Hydra's search-path dump.

    With ``hydra.searchpath`` overrides options may live anywhere: Hydra checks them.
    """
    if user_dir is not None:
        check_group_names(user_dir)
    for arg in args:
        _check_renamed(arg)
    if any(a.partition("=")[0].lstrip("+~") == "hydra.searchpath" for a in args):
        return
    for arg in args:
        key, sep, value = arg.partition("=")
        group = key.lstrip("+~")
        if not sep or group.startswith("hydra") or not any((d / group).is_dir() for d in config_dirs(user_dir)):
            continue
        known = available_options(group, user_dir)
        names = [n.strip() for n in value.strip("[]").split(",")]
        unknown = [n for n in names if n and n != "null" and not _is_sweep_syntax(n) and n not in known]
        if unknown:
            preset = PRESET_GROUPS.get(group)
            if preset and unknown[0] in available_options(preset, user_dir):
                raise ConfigError(f"{unknown[0]!r} is a preset of {group}: choose it with {preset}={unknown[0]} "
                                  f"({group}=[...] lists single ones)")
            where = ", ".join(str(d / group) for d in config_dirs(user_dir))
            raise ConfigError(f"unknown {group} {unknown[0]!r}; available: {', '.join(known)} "
                              f"(files in {where})")


def check_group_names(config_dir: Path) -> None:
    """A user's repository laid out with the groups' old names (``analysis/``, ``recipe/``,
    ``# @package analysis.<name>``, ``- /analysis: [...]``) is one line saying the new one,
    not a plugin Hydra cannot find or one that is silently not run."""
    for old, new in RENAMED_GROUPS.items():
        if (config_dir / old).is_dir():
            raise ConfigError(f"{config_dir / old}/: the config group {old}/ is now {new}/ "
                              f"({_RENAMED_WHY[old]}); rename the folder{_RENAMED_HOW[old]}")
    for path in sorted(config_dir.rglob("*.yaml")):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            match = _OLD_GROUP_LINE.match(line)
            if match:
                old = match.group("group")
                raise ConfigError(f"{path}, line {number}: the config group {old} is now {RENAMED_GROUPS[old]} "
                                  f"({_RENAMED_WHY[old]}); write {line.strip().replace(old, RENAMED_GROUPS[old], 1)!r}")


def _check_renamed(arg: str) -> None:
    """``analysis=[...]``, ``analysis.landscape.grid=5`` or ``recipe=paper``: the new spelling."""
    key, sep, value = arg.partition("=")
    group = key.lstrip("+~")
    head, dot, rest = group.partition(".")
    new = RENAMED_GROUPS.get(head)
    if sep and new:
        spelled = f"{key[:len(key) - len(group)]}{new}{dot}{rest}={value}"
        raise ConfigError(f"{head} is now {new} ({_RENAMED_WHY[head]}): write {spelled}")


# Plugin groups are plural and hold one file per plugin; their presets live in *_set groups.
PRESET_GROUPS = {"recipes": "recipe_set", "analyses": "analysis_set"}
# The groups' names before that rule; each still gets a one-line pointer to its new name.
RENAMED_GROUPS = {"recipe": "recipe_set", "analysis": "analyses"}
_RENAMED_WHY = {"recipe": "presets of recipes/", "analysis": "one file per analysis; presets in analysis_set/"}
_RENAMED_HOW = {"recipe": " and `override /recipe:` to `override /recipe_set:`",
                "analysis": " to analyses/ (an old analyses/ of presets to analysis_set/) and each "
                            "file's first line to `# @package analyses.<name>`"}
_OLD_GROUP_LINE = re.compile(r"^\s*(?:#\s*@package\s+|-\s*(?:override\s+)?/)(?P<group>recipe|analysis)\b(?!_)")


def _is_sweep_syntax(name: str) -> bool:
    """``glob(*)``, ``choice(a,b)``, ``${...}``: Hydra expands these itself."""
    return any(c in name for c in "()${}*")


def _search_packaged_configs_after(user_dir: Path) -> None:
    """Register a Hydra search-path plugin that puts the packaged tree after ``user_dir``."""
    from hydra.core.config_search_path import ConfigSearchPath
    from hydra.core.plugins import Plugins
    from hydra.plugins.search_path_plugin import SearchPathPlugin

    class PackagedConfigs(SearchPathPlugin):
        def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
            search_path.append("soup-exp", f"file://{packaged_config_dir()}")

    Plugins.instance().register(PackagedConfigs)


def _register_launchers() -> None:
    """soup-exp's watched submitit launchers (hydra_plugins.soup_exp_launchers): Hydra's
    plugin scan misses them in an editable install, so they are registered by hand."""
    from hydra.core.plugins import Plugins

    from hydra_plugins.soup_exp_launchers.watched import WatchedLocalLauncher, WatchedSlurmLauncher

    for launcher in (WatchedLocalLauncher, WatchedSlurmLauncher):
        Plugins.instance().register(launcher)


def _save_hydra_configs_atomically(stage: str) -> None:
    """Hydra writes ``.hydra/config.yaml`` (and hydra.yaml, overrides.yaml) before the job
    starts; written through :func:`soup_exp.utils.io.atomic_write_text` instead, a full
    disk or a permission problem there is the stage's one-line error, not a traceback."""
    import hydra.core.utils as hydra_utils

    def save_config(cfg: Any, filename: str, output_dir: Path) -> None:
        from omegaconf import OmegaConf

        from soup_exp.stages.experiment import exit_with_error
        from soup_exp.utils.io import WriteError, atomic_write_text

        try:
            output_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(output_dir / filename, OmegaConf.to_yaml(cfg))
        except WriteError as err:
            exit_with_error(stage, err)
        except OSError as err:
            exit_with_error(stage, f"cannot write {output_dir / filename}: {err.strerror or err}")

    hydra_utils._save_config = save_config


def stage_entry(name: str) -> Callable[[], None]:
    """``main()`` for `python -m soup_exp.<name>`: compose ``<name>.yaml`` and run the stage."""
    stage = STAGES[name]

    def task(cfg: Any) -> Any:
        from soup_exp.stages.experiment import run_stage

        return run_stage(cfg, stage.run(), claim=stage.claims(cfg))

    def main() -> None:
        import hydra

        from soup_exp.stages.stage_help import stage_help, wants_help
        from soup_exp.utils.config import hand_over_secrets, split_secret_overrides

        if wants_help(sys.argv[1:]):
            print(stage_help(name))
            return
        try:
            user_dir, args = split_config_dir(sys.argv[1:])
            if user_dir is not None:
                check_yaml_syntax(user_dir)
            check_experiment(args, user_dir)
            args, secrets = split_secret_overrides(args)
            hand_over_secrets(secrets)
        except ConfigError as err:
            print(f"soup-exp {name}: error: {err}", file=sys.stderr)
            sys.exit(2)
        if user_dir is not None:
            _search_packaged_configs_after(user_dir)
        _register_launchers()
        _save_hydra_configs_atomically(name)
        args = ["dry_run=true" if a == DRY_RUN_FLAG else a for a in args]
        sys.argv = [sys.argv[0], *args]  # what Hydra parses and W&B records: no secrets
        config_path = str(user_dir or packaged_config_dir())
        try:
            hydra.main(config_path=config_path, config_name=name, version_base="1.3")(task)()
        except KeyboardInterrupt:
            print(f"soup-exp {name}: interrupted; rerun the same command to resume", file=sys.stderr)
            sys.exit(INTERRUPTED_EXIT)

    return main
