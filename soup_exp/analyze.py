"""`soup-exp analyze`: the analysis suite on the soup stage's pool of ingredients.

Analyses are plugins (:mod:`soup_exp.analysis`): the ``analyses`` config group holds one
file per analysis, and ``analyses=[landscape,angles,...]`` selects and orders them. Every
selected analysis's parameters are checked before the first one runs. Each writes its
figures (PNG + PDF), their data (CSV) and ``analysis.json`` to
``<analysis_dir>/<name>/`` (:mod:`soup_exp.artifacts.analysis`); an analysis already done
for the same pool, settings and parameters is skipped, and an interrupted one resumes from
its saved partial results. Figures, tables and numbers go to one W&B run.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from soup_exp.analysis.context import AnalysisContext
from soup_exp.analysis.settings import analysis_key_settings
from soup_exp.artifacts import WEIGHTS_FILE, check_name
from soup_exp.artifacts.analysis import file_stats, finished_analysis, write_analysis_record
from soup_exp.evaluation.settings import EvalSettings
from soup_exp.soups.ingredients import LazyWeights, load_ingredients
from soup_exp.soups.settings import SoupSettings
from soup_exp.stages.entry import stage_entry
from soup_exp.stages.roles import AnalysisRoles
from soup_exp.utils.config import to_plain
from soup_exp.utils.hashing import stable_hash
from soup_exp.utils.io import remove_stale_temp_files
from soup_exp.utils.plugins import Plugin, plan_line, selected_plugins
from soup_exp.utils.runtime import code_version
from soup_exp.utils.text import plural

log = logging.getLogger(__name__)


def selected_analyses(cfg: DictConfig) -> list[Plugin]:
    """The analyses of ``cfg.analyses`` in selection order, parameters checked."""
    return selected_plugins(to_plain(cfg.get("analyses")), "analyses", check_name, "landscape,angles")


def check_analyze(cfg: DictConfig, overrides: Sequence[str] = ()) -> None:
    """Analyses and their parameters, and a pool that holds ingredients, before anything is created."""
    selected_analyses(cfg)
    SoupSettings.from_config(cfg)
    load_ingredients(to_plain(cfg.soup.pool))


def plan_analyze(cfg: DictConfig, overrides: Sequence[str] = ()) -> dict[str, list[str]]:
    """A dry run's lines: the pool, each selected analysis and whether it is already done."""
    from soup_exp.errors import SoupExpError
    from soup_exp.stages.preflight import logger_line

    pool = to_plain(cfg.soup.pool)
    try:
        ingredients = load_ingredients(pool)
    except (SoupExpError, FileNotFoundError):
        ingredients = []
    lines = [f"pool: {pool}: " + (plural(len(ingredients), "finished ingredient") if ingredients
                                  else "no finished ingredients yet")]
    for analysis in selected_analyses(cfg):
        folder = Path(str(cfg.analysis_dir)) / analysis.name
        done = bool(ingredients) and finished_analysis(
            folder, analysis_key(cfg, ingredients, analysis.target, analysis.params)) is not None
        lines.append(plan_line(analysis, done, "to run"))
    return {"analyze": lines, "outputs": [f"analyses: {cfg.analysis_dir}", logger_line(cfg)]}


def run_analyze(cfg: DictConfig, run: Any = None) -> dict[str, Path]:
    """Run every selected analysis in order; returns analysis name -> its folder. ``run``:
    a W&B run to log to (default: the stage's own, finished on return)."""
    from soup_exp.tracking import start_run

    analyses = selected_analyses(cfg)
    ingredients = load_ingredients(to_plain(cfg.soup.pool))
    remove_stale_temp_files(cfg.analysis_dir)
    log.info("analysing %d ingredients into %s: %s", len(ingredients), cfg.analysis_dir,
             ", ".join(a.name for a in analyses))
    made: dict[str, Path] = {}
    analysis_dir = Path(cfg.analysis_dir)
    with contextlib.nullcontext(run) if run is not None else start_run(cfg, "analyze", f"{cfg.name}-analyze") as run:
        roles = AnalysisRoles(cfg, ingredients, run)
        for analysis in analyses:
            key = analysis_key(cfg, ingredients, analysis.target, analysis.params)
            record = finished_analysis(analysis_dir / analysis.name, key)
            made[analysis.name] = analysis_dir / analysis.name
            if record is not None:  # logged by the run that made it: an analyze with nothing to do has no run
                log.info("analysis '%s' already done for this pool and these parameters: %s (delete it to redo it)",
                         analysis.name, analysis_dir / analysis.name)
            else:
                _log_to_wandb(run, _run_one(roles.context(analysis.name, key), analysis), made[analysis.name])
    print(summary(made))
    return made


def analysis_key(cfg: DictConfig, ingredients: Sequence[LazyWeights], target: str, params: Any) -> str:
    """What an analysis's numbers depend on: the pool's and zero-shot model's files, the
    model, data and evaluation settings, and the analysis with its parameters."""
    pool = [[ing.name, file_stats([ing.path]) if ing.path else None] for ing in ingredients]
    soup_settings = SoupSettings.from_config(cfg)
    zeroshot = soup_settings.zeroshot_dir / WEIGHTS_FILE
    settings = analysis_key_settings(cfg.model, EvalSettings.from_config(cfg), soup_settings)
    return stable_hash({"target": target, "params": params, "pool": pool,
                        "zeroshot": file_stats([zeroshot]), "settings": settings}, length=20)


def _run_one(ctx: AnalysisContext, analysis: Plugin) -> dict[str, Any]:
    store = ctx.store
    started = time.perf_counter()
    numbers = analysis(ctx)
    seconds = round(time.perf_counter() - started, 1)
    record = {
        "name": analysis.name, "label": analysis.label, "target": analysis.target, "params": analysis.params,
        "key": store.key, "inputs": file_stats(sorted(store.inputs)), "numbers": numbers or {},
        "outputs": [p.name for p in store.outputs], "seconds": seconds, "code_version": code_version(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_analysis_record(store.folder, record)
    log.info("analysis %s finished in %.1f s: %s", analysis.name, seconds,
             ", ".join(str(p) for p in store.outputs if p.suffix == ".png") or "no figures")
    return record


def _log_to_wandb(run: Any, record: dict[str, Any], folder: Path) -> None:
    """Each figure as an image, each CSV as a table, scalar numbers in the summary."""
    name = record["name"]
    for output in record.get("outputs") or []:
        path = folder / output
        if path.suffix == ".png":
            run.log_image(f"analysis/{name}/{path.stem}", path)
        elif path.suffix == ".csv":
            columns, rows = read_table(path)
            run.log_table(f"analysis/{name}/{path.stem}", columns, rows)
    run.summary({f"analysis/{name}/{k}": v for k, v in _scalars(record.get("numbers") or {})})


def read_table(path: Path) -> tuple[list[str], list[list[Any]]]:
    """A CSV written by :func:`soup_exp.reporting.figures.save_data`, typed per column as a
    W&B table needs: a column whose filled cells all parse as numbers holds floats, any
    other holds strings; empty cells are None."""
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        columns = next(reader, [])
        rows = list(reader)
    numeric = [all(_is_number(row[i]) for row in rows if i < len(row) and row[i] != "") for i in range(len(columns))]
    return columns, [[None if cell == "" else float(cell) if numeric[i] else cell for i, cell in enumerate(row)]
                     for row in rows]


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _scalars(numbers: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    found = []
    for key, value in numbers.items():
        if isinstance(value, dict):
            found += _scalars(value, f"{prefix}{key}/")
        elif isinstance(value, int | float | str) and not isinstance(value, bool):
            found.append((f"{prefix}{key}", value))
    return found


def summary(made: dict[str, Path]) -> str:
    lines = ["analyses written:"]
    for name, folder in made.items():
        figures = sorted(p.name for p in folder.glob("*.png"))
        lines.append(f"  {name}: {folder} ({', '.join(figures) or 'no figures'})")
    return "\n".join(lines)


main = stage_entry("analyze")

if __name__ == "__main__":
    main()
