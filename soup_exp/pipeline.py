"""`soup-exp pipeline`: every stage in order for one experiment (the demo runs this).

Inputs first (the data stage runs ``data.prepare`` and ``model.prepare``, e.g. the demo's
generated data and pretrained start, both cached), then the zero-shot model, the LP init and the fine-tuning sweep as a real Hydra multirun (so a
`launcher=` override sends it to submitit or SLURM exactly as `soup-exp finetune -m`
would), then soups, evaluation, the analyses and the report, each composed from its own primary
config with the same user overrides.
"""

from __future__ import annotations

import copy
import functools
import logging
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hydra import compose
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from soup_exp.cluster.signals import run_forwarding_signals
from soup_exp.errors import SoupExpError
from soup_exp.inputs import input_steps, prepare_inputs
from soup_exp.stages.entry import STAGES, packaged_config_dir, stage_entry
from soup_exp.tracking.offline_runs import run_dirs
from soup_exp.tracking.wandb_run import wandb_dir
from soup_exp.utils.config import apply_secret_overrides, loggable_config
from soup_exp.utils.io import atomic_write_json
from soup_exp.utils.text import plural

log = logging.getLogger(__name__)

SIGNALLED_EXITS = {128 + signal.SIGINT, 128 + signal.SIGTERM}
LP_NAME = "lp_init"  # conf/sweep/lp_init.yaml: the LP init every fine-tune starts from


def user_overrides() -> list[str]:
    """The overrides the user gave this pipeline run (empty outside a Hydra app)."""
    try:
        return list(HydraConfig.get().overrides.task)
    except ValueError:
        return []


def config_dir_args() -> list[str]:
    """``--config-dir DIR`` when this run's primary configs are a user's, for subprocesses."""
    try:
        sources = HydraConfig.get().runtime.config_sources
    except ValueError:
        return []
    for source in sources:
        user = source.provider == "main" and source.schema == "file"
        if user and Path(source.path).resolve() != packaged_config_dir().resolve():
            return ["--config-dir", str(source.path)]
    return []


def _override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def overrides_for(stage: str, overrides: Sequence[str]) -> list[str]:
    """Keep the overrides that ``stage``'s config understands.

    The pipeline accepts the union of every stage's keys; e.g. ``recipe.*`` means
    nothing to the fine-tuning stage and would make its composition fail.
    """
    known = _known_keys(stage, _search_path())
    kept = []
    for override in overrides:
        if _override_key(override).split(".", 1)[0].split("/", 1)[0] in known:
            kept.append(override)
    return kept


@functools.cache
def _known_keys(stage: str, search_path: tuple[str, ...]) -> frozenset[str]:
    """Top-level keys and config groups of ``stage``'s config (per config search path)."""
    base = compose(config_name=stage, return_hydra_config=True)
    return frozenset(set(base.keys()) | set(base.hydra.runtime.choices.keys()) | {"hydra"})


def _search_path() -> tuple[str, ...]:
    from hydra.core.global_hydra import GlobalHydra

    return tuple(f"{e.provider}={e.path}" for e in GlobalHydra.instance().config_loader().get_search_path().get_path())


def compose_stage(stage: str, overrides: Sequence[str], extra: Sequence[str] = ()) -> DictConfig:
    """``stage``'s config with this run's overrides (secret ones come from the environment).

    A composition costs 0.2-0.7 s and the checks, the plan and the run ask for the same ones,
    so each is composed once per process (and search path) and handed out as a copy."""
    key = (stage, tuple(overrides), tuple(extra), _search_path())
    if key not in _COMPOSED:
        _COMPOSED[key] = _compose_with_known(stage, overrides, extra)
    return apply_secret_overrides(copy.deepcopy(_COMPOSED[key]))


def _compose_with_known(stage: str, overrides: Sequence[str], extra: Sequence[str]) -> DictConfig:
    """Every override first, as most runs give only keys that every stage has; only when
    Hydra refuses one (a key or group this stage lacks) are they filtered to the stage's
    own, which costs a composition more. ``+``/``~`` overrides are always filtered: Hydra
    would add or delete a key that the stage does not have rather than refuse it."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    if not any(o.startswith(("+", "~")) for o in overrides):
        try:
            return compose(config_name=stage, overrides=[*overrides, *extra])
        except (HydraException, OmegaConfBaseException):
            pass
    return compose(config_name=stage, overrides=[*overrides_for(stage, overrides), *extra])


_COMPOSED: dict[tuple, DictConfig] = {}


def launcher_overrides() -> list[str]:
    """The user's ``hydra.launcher.*`` overrides (Hydra keeps them apart from the task's),
    for every job the pipeline submits."""
    try:
        given = list(HydraConfig.get().overrides.hydra)
    except ValueError:
        return []
    return [o for o in given if _override_key(o).startswith(("hydra.launcher.", "hydra/launcher"))]


def submits_jobs() -> bool:
    """Whether the selected launcher sends jobs elsewhere (submitit, SLURM) rather than
    running them in this process."""
    try:
        return HydraConfig.get().runtime.choices.get("hydra/launcher") not in (None, "basic")
    except ValueError:
        return False


def run_multirun(stage: str, overrides: Sequence[str], cfg: DictConfig, what: str) -> None:
    """``soup-exp <stage> -m ...`` through the selected launcher, with its settings."""
    command = [sys.executable, "-m", f"soup_exp.{stage}", *config_dir_args(), "--multirun",
               *overrides, *launcher_overrides()]
    log.info("%s: %s", what, " ".join(command))
    code = run_forwarding_signals(command)
    if code in SIGNALLED_EXITS:
        print(f"soup-exp pipeline: stopped during {what} ({signal.Signals(code - 128).name}); "
              "rerun the same command to resume", file=sys.stderr)
        sys.exit(code)
    if code != 0:
        raise SoupExpError(
            f"{what} failed; its logs are under {Path(cfg.out_dir) / 'hydra'}. "
            "Rerunning the pipeline resumes: finished work is kept."
        )


def run_finetunes(cfg: DictConfig, overrides: Sequence[str]) -> None:
    """The zero-shot model, the LP init, then the sweep (``pipeline.sweep``) as a multirun.

    The pipeline picks each job's sweep config itself, so a user's ``sweep=`` choice is
    dropped; ``sweep.*`` values (e.g. ``sweep.seed``) only reach the random sweep. With a
    launcher that submits jobs, the zero-shot model and the LP init are jobs too.
    """
    baselines = baseline_sweeps(cfg)
    if submits_jobs():
        run_multirun("finetune", [*overrides_for("finetune", fixed_overrides(overrides)),
                                  f"sweep={','.join(baselines)}"], cfg, "zero-shot model and LP init")
    else:
        run_finetune = STAGES["finetune"].run()
        for single in baselines:
            run_finetune(compose_stage("finetune", fixed_overrides(overrides), [f"sweep={single}"]))

    size = int(cfg.pipeline.sweep_size)
    if size > 0:
        run_multirun("finetune", [*sweep_overrides(cfg, overrides), f"sweep.index=range({size})"], cfg,
                     f"fine-tuning sweep of {plural(size, 'run')}")


def baseline_sweeps(cfg: DictConfig) -> list[str]:
    """The single runs before the sweep: the zero-shot model (CLIP backbones) and the LP init."""
    return (["zeroshot"] if cfg.model.source == "open_clip" else []) + [LP_NAME]


def fixed_overrides(overrides: Sequence[str]) -> list[str]:
    return [o for o in overrides if not _override_key(o).startswith("sweep")]


def sweep_overrides(cfg: DictConfig, overrides: Sequence[str]) -> list[str]:
    """The fine-tuning sweep's overrides, but for ``sweep.index``."""
    sweep_values = [o for o in overrides if _override_key(o) != "sweep"]
    return [*overrides_for("finetune", sweep_values), f"sweep={cfg.pipeline.sweep}",
            f"train.init_from={Path(cfg.ingredients_dir) / LP_NAME}"]


def _composed(stage: str) -> Callable[[DictConfig, Sequence[str]], Any]:
    return lambda cfg, overrides: STAGES[stage].run()(compose_stage(stage, overrides))


def _launched(stage: str) -> Callable[[DictConfig, Sequence[str]], Any]:
    """In this process, or as a job of the selected launcher when it submits jobs."""
    def step(cfg: DictConfig, overrides: Sequence[str]) -> Any:
        if submits_jobs():
            return run_multirun(stage, overrides_for(stage, overrides), cfg, f"the {stage} stage")
        return STAGES[stage].run()(compose_stage(stage, overrides))

    return step


STEPS: dict[str, Callable[[DictConfig, Sequence[str]], Any]] = {
    "data": lambda cfg, overrides: prepare_inputs(cfg),
    "finetune": run_finetunes,
    "soup": _launched("soup"),
    "evaluate": _launched("evaluate"),
    "analyze": _launched("analyze"),
    "report": _composed("report"),
}


def check_stage_names(cfg: DictConfig) -> None:
    unknown = [s for s in cfg.pipeline.stages if s not in STEPS]
    if unknown:
        raise SoupExpError(f"pipeline.stages: unknown {unknown}; choose from {list(STEPS)}")


def check_pipeline(cfg: DictConfig, overrides: Sequence[str] = ()) -> None:
    """What can fail before the first stage: stage names, the sweep's hyperparameters, the
    selected recipes, evaluation sets and analyses (each stage checks its inputs again when it starts)."""
    check_stage_names(cfg)
    stages = set(cfg.pipeline.stages)
    if "data" in stages:
        input_steps(cfg)
    if "finetune" in stages and int(cfg.pipeline.sweep_size) > 0:
        from soup_exp.finetune import resolve_run

        resolve_run(sweep_member(cfg, overrides, 0))
    if "soup" in stages:
        from soup_exp.soup import selected_recipes

        selected_recipes(compose_stage("soup", overrides))
    if "evaluate" in stages:
        from soup_exp.evaluate import check_evaluate

        check_evaluate(compose_stage("evaluate", [o for o in overrides if _override_key(o) != "check_data"]),
                       roots=not data_stage_makes_data(cfg))
    if "analyze" in stages:
        from soup_exp.analyze import selected_analyses

        selected_analyses(compose_stage("analyze", overrides))


def data_stage_makes_data(cfg: DictConfig) -> bool:
    """Whether this run's data stage makes the datasets (``data.prepare``), so that their roots
    need not exist before the first stage."""
    return "data" in cfg.pipeline.stages and cfg.data.get("prepare") is not None


def plan_pipeline(cfg: DictConfig, overrides: Sequence[str] = ()) -> dict[str, list[str]]:
    """Every stage's dry-run lines, with the sweep's jobs as the multirun would draw them."""
    from soup_exp.stages.preflight import merge_plans, prepare_line

    stages = list(cfg.pipeline.stages)
    plans = [{"stages": [" -> ".join(stages)]}]
    if "data" in stages:
        plans.append({"data": [prepare_line(section, step.target) for section, step in input_steps(cfg)]})
    if "finetune" in stages:
        plans += _finetune_plans(cfg, overrides)
    for stage in ("soup", "evaluate", "analyze", "report"):
        if stage in stages:
            plans.append(STAGES[stage].hook("plan")(compose_stage(stage, overrides), overrides))
    plan = merge_plans(plans)
    if "evaluate" in stages and "finetune" in stages:
        plan["evaluate"].append("... and every model the stages above make")
    plan.setdefault("outputs", []).append(f"pipeline.json, everything: {cfg.out_dir}")
    return plan


def _finetune_plans(cfg: DictConfig, overrides: Sequence[str]) -> list[dict[str, list[str]]]:
    from soup_exp.finetune import describe_run, plan_finetune, resolve_run

    plans = [plan_finetune(compose_stage("finetune", fixed_overrides(overrides), [f"sweep={single}"]))
             for single in baseline_sweeps(cfg)]
    size = int(cfg.pipeline.sweep_size)
    if size > 0:
        launcher = next((o.split("=", 1)[1] for o in overrides if _override_key(o) == "launcher"), "local")
        lines = [f"sweep {cfg.pipeline.sweep}: {plural(size, 'job')} "
                 f"(a Hydra multirun, launcher={launcher})"]
        lines += [f"  {describe_run(resolve_run(sweep_member(cfg, overrides, index)))}" for index in range(size)]
        plans.append({"finetune": lines})
    return plans


def sweep_member(cfg: DictConfig, overrides: Sequence[str], index: int) -> DictConfig:
    """Job ``index`` of the fine-tuning sweep's multirun, composed once for every index."""
    member = compose_stage("finetune", sweep_overrides(cfg, overrides))
    member.sweep.index = index
    return member


def check_cluster_request() -> None:
    """A SLURM request no node can meet stops the pipeline before its first stage."""
    try:
        launcher = HydraConfig.get().launcher
    except ValueError:
        return
    if submits_jobs() and "Slurm" in str(launcher.get("_target_", "")):
        from soup_exp.cluster.preflight import check_request

        check_request(launcher)


def run_pipeline(cfg: DictConfig) -> dict[str, float]:
    overrides = user_overrides()
    check_stage_names(cfg)  # the rest of check_pipeline ran before Hydra created the run (preflight)
    check_cluster_request()
    timings: dict[str, float] = {}
    start = time.perf_counter()
    for name in cfg.pipeline.stages:
        log.info("pipeline: %s", name)
        t0 = time.perf_counter()
        STEPS[name](cfg, overrides)
        timings[name] = round(time.perf_counter() - t0, 1)
    timings["total"] = round(time.perf_counter() - start, 1)
    atomic_write_json(Path(cfg.out_dir) / "pipeline.json", {
        "overrides": overrides, "seconds": timings,
        "config": loggable_config(cfg),
    })
    print(summary(cfg, timings))
    return timings


def summary(cfg: DictConfig, timings: dict[str, float]) -> str:
    out = Path(cfg.out_dir)
    runs_dir = wandb_dir(cfg)
    runs = run_dirs(runs_dir) if runs_dir.is_dir() else []
    lines = [
        "",
        f"soup-exp pipeline '{cfg.name}' finished in {timings['total']:.0f} s "
        f"({', '.join(f'{k} {v:.0f} s' for k, v in timings.items() if k != 'total')})",
        f"  ingredients : {cfg.ingredients_dir}",
        f"  soups       : {cfg.soups_dir}",
        f"  results     : {cfg.results_file}",
        f"  report      : {cfg.report_dir}",
        f"  W&B ({cfg.logger.mode}) : {runs_dir} ({plural(len(runs), 'run')}; see them: `soup-exp runs {runs_dir}`)"
        + ("; upload with `wandb sync " + str(runs_dir) + "/offline-run-*`" if cfg.logger.mode == "offline" else ""),
        f"  everything  : {out}",
    ]
    return "\n".join(lines)


main = stage_entry("pipeline")

if __name__ == "__main__":
    main()
