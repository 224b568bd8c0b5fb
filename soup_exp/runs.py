"""`soup-exp runs`: what each stage's W&B run logged, read from the offline files.

Offline runs are the default (compute nodes often have no network), and W&B offers no
way to look inside one before ``wandb sync``. This command lists an experiment's runs
(stage, name, state, config highlights, summary, the last history values) or shows one
in full, as text or JSON, with no server and no W&B login.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from soup_exp.errors import ConfigError, SoupExpError
from soup_exp.tracking.offline_runs import OfflineRun, WandbFileError, read_offline_run, run_dirs
from soup_exp.utils.config import config_get
from soup_exp.utils.text import plural

# The config keys that tell one stage's runs apart; every key is in the full view.
HIGHLIGHTS: dict[str, tuple[str, ...]] = {
    "finetune": ("sweep.name", "train.mode", "train.lr", "train.weight_decay", "train.epochs",
                 "train.batch_size", "model.name"),
    "soup": ("recipes", "soup.pool", "soup.arithmetic", "eval.precision"),
    "evaluate": ("models", "eval.datasets", "eval.precision"),
    "analyze": ("analyses", "soup.pool"),
    "report": ("results", "compare", "per_recipe"),
}
SHOWN_PER_LINE = 6  # summary and history keys in the listing; the full view shows every one
CONFIG_NAME = "report"  # any stage's config gives logger.dir; this one composes fastest


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        selector, wandb_dir = locate(args.targets, args.config_dir)
        runs, errors = read_runs(wandb_dir, selector)
    except SoupExpError as err:
        _fail(str(err))
    if args.json:
        print(json.dumps([r.as_dict() for r in runs] if selector is None else runs[0].as_dict(), indent=1,
                         default=str))
    elif selector is None:
        print(listing(wandb_dir, runs))
    else:
        print(full_view(runs[0]))
    for error in errors:
        print(f"soup-exp runs: error: {error}", file=sys.stderr)
    if errors:
        sys.exit(2)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="soup-exp runs", description="List an experiment's W&B runs, or show one in full, from the offline files\n"
        "(no server, no login). The W&B directory is <logger.dir>/wandb of the experiment (name=,\n"
        "experiment=, paths.output_dir= as for every stage), or a path given here.",
        epilog="examples:\n  soup-exp runs experiment=demo\n  soup-exp runs name=demo 3k9x2f1a\n"
        "  soup-exp runs outputs/demo/wandb --json\n  soup-exp runs outputs/demo/wandb/offline-run-20261203_071012-3k9x2f1a",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("targets", nargs="*", metavar="RUN|PATH|key=value",
                        help="a run id, a run directory or .wandb file, a W&B or experiment directory, "
                             "or config overrides (name=demo, experiment=demo, paths.output_dir=DIR)")
    parser.add_argument("--json", action="store_true", help="print JSON (every history row included)")
    parser.add_argument("--config-dir", "-cd", help="your configs, searched before the packaged ones")
    return parser


def locate(targets: Sequence[str], config_dir: str | None = None) -> tuple[str | None, Path]:
    """``(run selector or None, the wandb/ directory)`` from the command's arguments: config
    overrides, at most one path (a run, a W&B or an experiment directory), at most one run id."""
    overrides = [t for t in targets if "=" in t and not Path(t).expanduser().exists()]
    paths = [Path(t).expanduser() for t in targets if t not in overrides and Path(t).expanduser().exists()]
    ids = [t for t in targets if t not in overrides and not Path(t).expanduser().exists()]
    for given in ids:
        if "/" in given:
            raise ConfigError(f"{given}: no such file or directory")
    if len(paths) > 1 or len(ids) > 1:
        raise ConfigError(f"one path and one run id at most, got {', '.join(t for t in targets if t not in overrides)}")
    selector = ids[0] if ids else None
    if not paths:
        return selector, experiment_wandb_dir(overrides, config_dir)
    path = paths[0]
    if overrides:
        raise ConfigError(f"{path} is a path: the overrides {', '.join(overrides)} do not apply to it")
    if path.is_file() or any(path.glob("run-*.wandb")):  # one run's file or directory
        if selector is not None:
            raise ConfigError(f"{path} is one run already: drop {selector!r}")
        return str(path), path.parent.parent if path.is_file() else path.parent
    return selector, path / "wandb" if (path / "wandb").is_dir() else path


def experiment_wandb_dir(overrides: Sequence[str], config_dir: str | None = None) -> Path:
    """``<logger.dir>/wandb`` of the experiment the overrides name, as its stages compose it."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from soup_exp.stages.entry import (
        _search_packaged_configs_after,
        check_experiment,
        check_yaml_syntax,
        packaged_config_dir,
        split_config_dir,
    )
    from soup_exp.tracking.wandb_run import wandb_dir

    user_dir, overrides = split_config_dir([*(["--config-dir", config_dir] if config_dir else []), *overrides])
    if user_dir is not None:
        check_yaml_syntax(user_dir)
        _search_packaged_configs_after(user_dir)
    check_experiment(overrides, user_dir)
    try:
        with initialize_config_dir(config_dir=str(user_dir or packaged_config_dir()), version_base="1.3"):
            return wandb_dir(compose(config_name=CONFIG_NAME, overrides=list(overrides)))
    except (HydraException, OmegaConfBaseException) as err:
        raise ConfigError(f"{' '.join(overrides)}: {str(err).splitlines()[0]}") from err


def read_runs(wandb_dir: Path, selector: str | None = None) -> tuple[list[OfflineRun], list[str]]:
    """The runs under ``wandb_dir`` (only the selected one with ``selector``) and one error
    line per run file that cannot be read; a selected run that cannot be read raises."""
    if selector is not None and Path(selector).exists():
        return [read_offline_run(selector, timeout=0)], []
    folders = run_dirs(wandb_dir)
    if selector is not None:
        chosen = [d for d in folders if d.name == selector or d.name.endswith(f"-{selector}")]
        if not chosen:
            known = ", ".join(d.name.rsplit("-", 1)[-1] for d in folders) or "none"
            raise ConfigError(f"no W&B run {selector!r} in {wandb_dir} (runs there: {known})")
        return [read_offline_run(chosen[0], timeout=0)], []
    runs, errors = [], []
    for folder in folders:
        try:
            runs.append(read_offline_run(folder, timeout=0))
        except WandbFileError as err:
            errors.append(str(err))
    return sorted(runs, key=lambda r: (r.start_time or 0.0, r.dir.name)), errors


def listing(wandb_dir: Path, runs: Sequence[OfflineRun]) -> str:
    lines = [f"W&B runs in {wandb_dir}: {len(runs)} (soup-exp runs <id> shows one in full; --json for JSON)"]
    for run in runs:
        lines += ["", _headline(run)]
        series = _series(run)
        summary = {k: v for k, v in _visible(run.summary).items() if k not in series}  # the rest: history's last values
        lines += [f"  {label:<8} {text}" for label, text in (
            ("config", _pairs(highlights(run))), ("summary", _pairs(_scalars_first(summary), SHOWN_PER_LINE)),
            ("history", _history_line(series))) if text]
    return "\n".join(lines)


def full_view(run: OfflineRun) -> str:
    lines = [_headline(run), f"  dir      {run.dir}", f"  group    {run.group}   tags {', '.join(run.tags)}", "",
             "config:"]
    lines += [f"  {key} = {_value(value)}" for key, value in _flatten(_visible(run.config)).items()]
    lines += ["", "summary:"]
    lines += [f"  {key} = {_value(value)}" for key, value in sorted(_visible(run.summary).items())]
    lines += ["", f"history: {plural(len(run.history), 'row')}"]
    for key, values in sorted(_series(run).items()):
        lines.append(f"  {key}: {plural(len(values), 'value')}, first {_value(values[0])}, last {_value(values[-1])}")
    return "\n".join(lines)


def highlights(run: OfflineRun) -> dict[str, Any]:
    keys = HIGHLIGHTS.get(run.stage or "", ())
    return {key: value for key in keys if (value := config_get(run.config, key)) is not None}


def _headline(run: OfflineRun) -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(run.start_time)) if run.start_time else "?"
    return (f"{run.stage or '?':<9} {run.name or '?'}  [{run.state}]  started {started}  id {run.run_id}  "
            f"{plural(len(run.history), 'step')}")


def _history_line(series: dict[str, list[Any]]) -> str:
    """Each logged key's last value and how many values it has, numbers before media."""
    ordered = list(_scalars_first({key: values[-1] for key, values in series.items()}).items())
    shown = ordered[:SHOWN_PER_LINE]
    text = "  ".join(f"{key}={_value(last)} ({len(series[key])})" for key, last in shown)
    more = len(ordered) - len(shown)
    return text + (f"  +{more} more" if more else "") if text else ""


def _scalars_first(values: dict[str, Any]) -> dict[str, Any]:
    return dict(sorted(values.items(), key=lambda item: isinstance(item[1], dict | list)))


def _series(run: OfflineRun) -> dict[str, list[Any]]:
    """Every logged key (W&B's own ``_step``/``_runtime``/``_timestamp`` left out) -> its values, by key:
    wandb-core writes a row's items in no fixed order."""
    series: dict[str, list[Any]] = {}
    for row in run.history:
        for key, value in row.items():
            if not key.startswith("_"):
                series.setdefault(key, []).append(value)
    return dict(sorted(series.items()))


def _visible(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if not k.startswith("_")}


def _pairs(values: dict[str, Any], limit: int | None = None) -> str:
    items = list(values.items())
    shown = items[:limit] if limit else items
    text = "  ".join(f"{key}={_value(value)}" for key, value in shown)
    return text + (f"  +{len(items) - len(shown)} more" if len(items) > len(shown) else "")


def _value(value: Any) -> str:
    """A short rendering: floats to 4 significant digits, a recipe or analysis mapping as its
    names, W&B media (tables, images) as their kind."""
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return f"<{value['_type']}>" if "_type" in value else f"[{','.join(map(str, value))}]" if value else "{}"
    if isinstance(value, list):
        return f"[{','.join(_value(v) for v in value)}]"
    return str(value)


def _flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict) and value and "_type" not in value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _fail(message: str) -> NoReturn:
    print(f"soup-exp runs: error: {message}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
    main()
