"""Before Hydra creates anything: check a run's config, or print a dry run's plan.

Hydra makes the run (or sweep) directory, saves the config there and opens the log file
before the task starts, so a run that failed its config checks used to leave an output
directory (and, inside the stage, a W&B run) behind. :class:`Preflight` is a Hydra
callback (``conf/hydra/default.yaml``); Hydra calls ``on_run_start`` and
``on_multirun_start`` before it writes anything. It runs the checks every stage shares
(``data.classes``, the output directory's owner) and the stage's own (``Stage.check``),
then either lets the run start or, with ``dry_run=true`` (``--dry-run``), prints what the
run would do (``Stage.plan``) and exits.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from soup_exp.stages.entry import STAGES, Stage
from soup_exp.utils.resolvers import planned_job
from soup_exp.utils.text import plural
from soup_exp.vocabulary import HELD_OUT

# A dry run's plan: section title -> lines, printed in the order of PLAN_SECTIONS.
Plan = dict[str, list[str]]
PLAN_SECTIONS = ("stages", "data", "finetune", "soup", "evaluate", "analyze", "report", "outputs")


def merge_plans(plans: Iterable[Plan]) -> Plan:
    """Sections of all ``plans``, each line once (a sweep's jobs share their datasets)."""
    merged: Plan = {}
    for plan in plans:
        for section, lines in plan.items():
            seen = merged.setdefault(section, [])
            seen.extend(line for line in lines if line not in seen)
    return merged


def render_plan(stage: str, plan: Plan, header: str = "") -> str:
    order = [s for s in PLAN_SECTIONS if s in plan] + [s for s in plan if s not in PLAN_SECTIONS]
    lines = [f"soup-exp {stage}: dry run, nothing is written{header}"]
    for section in order:
        if plan[section]:
            lines.append(f"{section}:")
            lines += [f"  {line}" for line in plan[section]]
    return "\n".join(lines)


def task_config(config: DictConfig) -> DictConfig:
    """The config the task will get: Hydra's node removed (as Hydra's run_job does)."""
    cfg = copy.deepcopy(config)
    with read_write(cfg), open_dict(cfg):
        cfg.pop("hydra", None)
    return cfg


def common_checks(stage: Stage, cfg: DictConfig) -> None:
    """What every stage needs before it starts: names that are path components, valid
    settings, a valid class space, an output directory that is not another experiment's
    and can be written."""
    from soup_exp.stages.experiment import check_config

    check_config(cfg)
    if cfg.get("data") is not None:
        from soup_exp.data.registry import class_space

        class_space(cfg.data)
    if stage.claims(cfg):
        from soup_exp.stages.experiment import check_output_dir

        check_output_dir(cfg)


def check(stage: Stage, cfg: DictConfig, overrides: Sequence[str]) -> bool:
    """Run every check; True when the stage's check already did the whole (read-only) run."""
    common_checks(stage, cfg)
    own = stage.hook("check")
    return bool(own(cfg, overrides)) if own is not None else False


def plan(stage: Stage, cfg: DictConfig, overrides: Sequence[str]) -> Plan:
    own = stage.hook("plan")
    return own(cfg, overrides) if own is not None else {}


def sweep_jobs(config: DictConfig) -> list[list[str]]:
    """The overrides of each job of a multirun, as Hydra's basic sweeper expands them."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = OmegaConf.select(config, "hydra.sweeper.params") or {}
    arguments = [f"{key}={value}" for key, value in params.items()]
    arguments += list(OmegaConf.to_container(config.hydra.overrides.task, resolve=False))
    parsed = OverridesParser.create().parse_overrides(arguments)
    return [list(job) for batch in BasicSweeper.split_arguments(parsed, max_batch_size=None) for job in batch]


def only_distinct_indices(jobs: Sequence[Sequence[str]]) -> bool:
    """True when the jobs of a multirun differ only in their ``sweep.index`` values, and
    no two share one (the shipped sweeps name every ingredient by its index)."""
    common = set(jobs[0]).intersection(*map(set, jobs[1:])) if jobs else set()
    varying = [[o for o in job if o not in common] for job in jobs]
    if not all(len(v) == 1 and v[0].partition("=")[0] == "sweep.index" for v in varying):
        return False
    return len({v[0] for v in varying}) == len(jobs)


def launcher_name(config: DictConfig) -> str:
    choices = OmegaConf.select(config, "hydra.runtime.choices") or {}
    return str(choices.get("launcher") or choices.get("hydra/launcher") or "basic")


@contextlib.contextmanager
def quiet_logs(enabled: bool = True, logger: str = "soup_exp") -> Iterator[None]:
    """The package's INFO records off for the duration (warnings and errors still show)."""
    target = logging.getLogger(logger)
    level = target.level
    if enabled:
        target.setLevel(logging.WARNING)
    try:
        yield
    finally:
        target.setLevel(level)


class Preflight(Callback):
    """Checks (and dry runs) before Hydra writes the run's directory."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        cfg = task_config(config)
        overrides = list(OmegaConf.to_container(config.hydra.overrides.task, resolve=False))
        self._preflight(cfg, [(cfg, overrides)], header="")

    def on_multirun_start(self, config: DictConfig, config_name: str | None = None, **kwargs: Any) -> None:
        from hydra import compose

        cfg = task_config(config)
        jobs = sweep_jobs(config)
        stage = STAGES[str(cfg.stage)]
        # Composing is ~0.15 s a job. A dry run lists every job; a real run checks its first
        # (a later job with a bad value fails in its own run) and composes all only when a
        # key other than distinct sweep.index values varies, as collisions need.
        # (a sweep name that ignores the index makes the first two collide)
        needed = len(jobs) if cfg.get("dry_run") or not only_distinct_indices(jobs) else 2
        composed = [(compose(config_name=config_name, overrides=job), job) for job in jobs[:needed]]
        try:
            refuse_colliding_outputs(stage, composed)
        except Exception as err:
            exit_on_user_error(stage, err)
        wanted = composed if cfg.get("dry_run") else composed[:1]
        header = f" ({plural(len(jobs), 'job')}, launcher {launcher_name(config)})"
        self._preflight(cfg, wanted, header=header, multirun=True)

    @staticmethod
    def _preflight(cfg: DictConfig, jobs: Sequence[tuple[DictConfig, list[str]]], header: str,
                   multirun: bool = False) -> None:
        stage = STAGES[str(cfg.stage)]
        try:
            # the run itself says what it does, so its checks stay silent; a data check is the run
            with quiet_logs(enabled=not cfg.get("check_data")):
                finished = []
                for number, (job_cfg, overrides) in enumerate(jobs):
                    with planned_job(number) if multirun else contextlib.nullcontext():
                        finished.append(check(stage, job_cfg, overrides))
                if cfg.get("dry_run"):
                    plans = []
                    for number, (job_cfg, overrides) in enumerate(jobs):
                        with planned_job(number) if multirun else contextlib.nullcontext():
                            plans.append(plan(stage, job_cfg, overrides))
                    print(render_plan(stage.name, merge_plans(plans), header))
                    sys.exit(0)
        except Exception as err:
            exit_on_user_error(stage, err)
        if all(finished):
            sys.exit(0)


def exit_on_user_error(stage: Stage, err: Exception) -> None:
    """A user's error is the stage's one line (also when Hydra or OmegaConf wrapped it, as a
    resolver's); anything else is a bug and keeps its traceback."""
    from soup_exp.stages.experiment import exit_with_error, user_error

    mine = user_error(err)
    if mine is None:
        raise err
    exit_with_error(stage.name, mine)


def refuse_colliding_outputs(stage: Stage, jobs: Sequence[tuple[DictConfig, list[str]]]) -> None:
    """Two jobs of one multirun that would write the same directory are refused before either
    starts; the message names only the overrides in which they differ."""
    from soup_exp.errors import ConfigError

    output = stage.hook("output")
    if output is None or len(jobs) < 2:
        return
    first_job: dict[Path, int] = {}
    for number, (job_cfg, overrides) in enumerate(jobs):
        with planned_job(number):
            path = Path(output(job_cfg))
        if path in first_job:
            other = jobs[first_job[path]][1]
            differ = sorted(set(overrides) ^ set(other))
            keys = sorted({o.partition("=")[0].lstrip("+~") for o in differ})
            raise ConfigError(
                f"jobs {first_job[path]} and {number} of this multirun would both write {path} (they differ only "
                f"in {', '.join(keys) or 'nothing'}); sweep a key that names the run (sweep.index, or "
                "sweep.name=...) or give each job its own train.output_dir")
        first_job[path] = number


def require_roots(cfg: DictConfig, names: Sequence[str]) -> None:
    """Every dataset root ``names`` read from exists (a stat each; layouts are checked by
    the readers and by check_data). Roots a ``data.prepare`` step makes exist once the
    pipeline's data stage has run: the message says so, and a dry run marks them instead."""
    from soup_exp.data.checker import data_dir_hint
    from soup_exp.data.layout import DatasetLayoutError

    step = prepare_target(cfg.data)
    if step and cfg.get("dry_run"):
        return
    missing = {f"{name} ({root})" for name, root in dataset_roots(cfg, names) if root and not Path(root).exists()}
    if missing:
        hint = (f"data.prepare ({step}) makes them: run the data stage first, `soup-exp pipeline "
                "pipeline.stages=[data]` with this run's overrides" if step else data_dir_hint(str(cfg.paths.data_dir)))
        raise DatasetLayoutError(f"dataset root(s) not found: {', '.join(sorted(missing))}. {hint}")


def dataset_roots(cfg: DictConfig, names: Sequence[str]) -> list[tuple[str, str | None]]:
    """``(name, root folder)`` of each dataset, as the data registry resolves it."""
    from soup_exp.data.registry import dataset_folder

    return [(name, dataset_folder(cfg.data, name)) for name in names]


# ---- plan lines the stages share ----------------------------------------------------------

def exists_mark(path: str | Path, made_by_data_stage: bool = False) -> str:
    if Path(str(path)).exists():
        return ""
    return "  [not made yet]" if made_by_data_stage else "  [missing]"


def prepare_target(section: Mapping[str, Any]) -> str | None:
    """The callable a config section's ``prepare`` step names (soup_exp.inputs), if any."""
    step = section.get("prepare")
    return str(step.get("_target_")) if isinstance(step, Mapping) else None


def prepare_line(section: str, target: str) -> str:
    return f"{section}.prepare: {target}, run by the pipeline's data stage"


def dataset_lines(cfg: DictConfig, names: Sequence[str]) -> list[str]:
    """One line per evaluation or training set: where it is read from, and whether it is there."""
    from soup_exp.data.registry import EVAL_DATASETS, TRAIN_READERS

    data = cfg.data
    step = prepare_target(data)
    lines = [prepare_line("data", step)] if step else []
    for name, root in dataset_roots(cfg, names):
        if name in TRAIN_READERS:
            heldout = data.heldout
            train = Path(str(root))
            mark = exists_mark(train, bool(step))
            if name == "train":
                lines.append(f"train: {train} minus the held-out split{mark}")
            elif heldout.get("index_file"):
                lines.append(f"{HELD_OUT} (held-out): the split in {heldout.index_file} of {train}{mark}")
            else:
                lines.append(f"{HELD_OUT} (held-out): {heldout.per_class} images/class of {train} "
                             f"(seed {heldout.seed}){mark}")
        elif name in EVAL_DATASETS:
            lines.append(f"{name}: {root}{exists_mark(root, bool(step)) if root else ''}")
        else:
            spec = (data.get("datasets") or {}).get(name) or {}
            lines.append(f"{name}: {root or spec.get('_target_') or '(your dataset)'}"
                         f"{exists_mark(root) if root else ''}")
    return lines


def classes_line(cfg: DictConfig) -> str:
    from soup_exp.data.registry import class_space

    space = class_space(cfg.data)
    if space.is_full:
        return "classes: all 1000 ImageNet classes"
    shown = ", ".join(space.wnids[:4]) + (", ..." if space.num_classes > 4 else "")
    return f"classes: {space.num_classes} ({shown})"


def logger_line(cfg: DictConfig) -> str:
    mode = cfg.logger.mode
    return "W&B: disabled" if mode == "disabled" else f"W&B ({mode}): {Path(str(cfg.logger.dir)) / 'wandb'}"
