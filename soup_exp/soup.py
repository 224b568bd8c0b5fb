"""`soup-exp soup`: cook the selected recipes from one pool of ingredients.

Recipes are plugins (:mod:`soup_exp.soups.recipe`): the ``recipes`` config group holds
one file per recipe, and ``recipes=[uniform,greedy,...]`` selects and orders them. Every
selected recipe's parameters are checked before the first one cooks. Each soup lands in
``<soups_dir>/<name>/`` (``model.safetensors`` for weight-space recipes, then
``soup.json``); a finished soup is skipped while its recorded inputs are unchanged
(:mod:`soup_exp.soups.freshness`), so an interrupted stage resumes and a changed pool or
setting re-cooks. Each soup records what its recipe cost (:mod:`soup_exp.soups.cost`);
the cost is no input, so a rerun skips the soup and keeps the cost it recorded.
"""

from __future__ import annotations

import functools
import logging
import shutil
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from soup_exp.artifacts import (
    SOUP_FILE,
    SoupCost,
    SoupRecord,
    check_name,
    portable_path,
    write_soup_dir,
)
from soup_exp.soups.context import SoupContext
from soup_exp.soups.cost import CostMeter
from soup_exp.soups.freshness import INPUTS_KEY
from soup_exp.soups.ingredients import LazyWeights, load_ingredients
from soup_exp.soups.recipe import Recipe, Soup, soups_of
from soup_exp.soups.settings import SoupSettings
from soup_exp.stages.entry import stage_entry
from soup_exp.stages.roles import SoupRoles
from soup_exp.utils.config import to_plain
from soup_exp.utils.io import read_json, remove_stale_temp_files
from soup_exp.utils.plugins import plan_line, selected_plugins
from soup_exp.utils.runtime import code_version
from soup_exp.utils.text import plural
from soup_exp.vocabulary import HELD_OUT

log = logging.getLogger(__name__)

STALE_DIR = ".stale"  # hidden: soup discovery skips it


def selected_recipes(cfg: DictConfig) -> list[Recipe]:
    """The recipes of ``cfg.recipes`` in selection order, parameters checked."""
    return [Recipe.of(p) for p in selected_plugins(to_plain(cfg.get("recipes")), "recipes", check_name,
                                                   "uniform,greedy")]


def check_soups(cfg: DictConfig, overrides: Sequence[str] = ()) -> None:
    """Recipes and their parameters, and a pool that holds ingredients, before anything is created."""
    selected_recipes(cfg)
    SoupSettings.from_config(cfg)
    load_ingredients(to_plain(cfg.soup.pool))


def plan_soups(cfg: DictConfig, overrides: Sequence[str] = ()) -> dict[str, list[str]]:
    """A dry run's lines: the pool, each selected recipe and whether its soup is already cooked."""
    from soup_exp.artifacts import is_finished_soup
    from soup_exp.errors import SoupExpError
    from soup_exp.stages.preflight import dataset_lines, logger_line

    pool = to_plain(cfg.soup.pool)
    try:
        names = [i.name for i in load_ingredients(pool)]
        found = f"{plural(len(names), 'finished ingredient')} ({', '.join(names)})"
    except (SoupExpError, FileNotFoundError):
        found = "no finished ingredients yet"
    lines = [f"pool: {pool}: {found}"]
    soups_dir = Path(str(cfg.soups_dir))
    by_recipe = soups_by_recipe(soups_dir)
    for recipe in selected_recipes(cfg):
        named = [n for n in by_recipe.get(recipe.name, []) if n != recipe.name]
        if is_finished_soup(soups_dir / recipe.name) or not named:
            lines.append(plan_line(recipe, is_finished_soup(soups_dir / recipe.name), "to cook"))
        else:  # a recipe that cooks several soups under their own names (WiSE-FT's alphas)
            lines.append(plan_line(recipe, False, f"{plural(len(named), 'soup')} cooked ({', '.join(named)}), "
                                                  "any other to cook"))
    return {"data": dataset_lines(cfg, [HELD_OUT]), "soup": lines,
            "outputs": [f"soups: {cfg.soups_dir}", logger_line(cfg)]}


def run_soups(cfg: DictConfig, run: Any = None) -> dict[str, Path]:
    """Cook every selected recipe in order; returns soup name -> directory."""
    recipes = selected_recipes(cfg)
    remove_stale_temp_files(cfg.soups_dir)
    pool = to_plain(cfg.soup.pool)
    ingredients = load_ingredients(pool)
    log.info("souping %s from %s into %s: %s", plural(len(ingredients), "ingredient"), pool, cfg.soups_dir,
             ", ".join(r.name for r in recipes))
    own_run = run is None
    if own_run:
        from soup_exp.tracking import start_run

        run = start_run(cfg, "soup", name=f"{cfg.name}-soup")
    roles = SoupRoles(cfg, ingredients, run)
    soups_dir, experiment = Path(cfg.soups_dir), Path(str(cfg.out_dir))
    made: dict[str, Path] = {}
    kept: set[str] = set()
    try:
        for recipe in recipes:
            ctx = roles.context(recipe.name, recipe.params)
            if ctx.store.finished(recipe.name):
                log.info("soup '%s' in %s is cooked from these ingredients and settings: skipping",
                         recipe.name, soups_dir / recipe.name)
                made[recipe.name] = soups_dir / recipe.name
            else:
                cooked = []
                with CostMeter(ingredients[0].nbytes()) as meter:
                    for soup in meter.measured(functools.partial(cook, recipe, ctx)):
                        made[soup.name] = write(ctx, recipe, soup, experiment, meter.cost())
                        cooked.append(soup.name)
                ctx.store.clear_state()
                if cooked:
                    log.info("recipe %s cooked: %s", recipe.name, describe_cost(meter.cost()))
                else:
                    log.info("recipe %s: nothing to cook%s", recipe.name,
                             f"; kept {', '.join(sorted(ctx.store.kept))}" if ctx.store.kept else "")
            kept |= ctx.store.kept
        made.update({name: soups_dir / name for name in sorted(kept - set(made))})
        retire_orphans(soups_dir, {r.name for r in recipes}, made)
    finally:
        if own_run:
            run.finish()
    log.info("soups written to %s: %s", soups_dir, ", ".join(made))
    return made


def soups_by_recipe(soups_dir: Path) -> dict[str, list[str]]:
    """Recipe -> the names of the finished soups in ``soups_dir`` that record it."""
    found: dict[str, list[str]] = {}
    for soup_file in sorted(Path(soups_dir).glob(f"*/{SOUP_FILE}")):
        try:
            recipe = read_json(soup_file).get("recipe")
        except (OSError, ValueError, AttributeError):
            continue
        found.setdefault(str(recipe), []).append(soup_file.parent.name)
    return found


def retire_orphans(soups_dir: Path, recipes: set[str], made: dict[str, Path]) -> list[Path]:
    """Soups that a selected recipe no longer makes (a WiSE-FT alpha dropped from the grid)
    move to ``<soups_dir>/.stale/``, where nothing evaluates or tables them; soups of
    recipes not selected this time are left alone."""
    moved = []
    for recipe, names in soups_by_recipe(soups_dir).items():
        for name in names:
            if recipe not in recipes or name in made:
                continue
            target = Path(soups_dir) / STALE_DIR / name
            if target.exists():
                shutil.rmtree(target)
            target.parent.mkdir(exist_ok=True)
            (Path(soups_dir) / name).rename(target)
            log.info("soup '%s' is no longer made by recipe %s with these parameters: moved to %s",
                     name, recipe, target)
            moved.append(target)
    return sorted(moved)


def cook(recipe: Recipe, ctx: SoupContext) -> Iterator[Soup]:
    """The soups ``recipe`` cooks, named (the recipe runs when called, then as they are drawn)."""
    return soups_of(recipe.name, recipe.cook(ctx))


def describe_cost(cost: SoupCost) -> str:
    memory = f", peak host {cost.peak_host_bytes / 1e9:.2f} GB" if cost.peak_host_bytes is not None else ""
    device = f", peak device {cost.peak_device_bytes / 1e9:.2f} GB" if cost.peak_device_bytes is not None else ""
    return (f"{cost.wall_s:.1f} s{memory}{device}, {plural(cost.held_out_passes or 0, 'held-out pass', 'held-out passes')}, "
            f"{cost.ingredient_reads:.2f} model reads")


def write(ctx: SoupContext, recipe: Recipe, soup: Soup, experiment: Path, cost: SoupCost) -> Path:
    record = soup_record(ctx, recipe, soup, experiment, cost)
    out = write_soup_dir(record.directory, record.json, soup.state_dict, soup.weights_from)
    held = record.held_out_accuracy
    log.info("%s -> %s%s", record.name, out, f" (held-out {100 * held:.2f}%)" if held is not None else "")
    if held is not None:
        ctx.run.summary({f"{record.name}/held_out_accuracy": held})
    return out


def soup_record(ctx: SoupContext, recipe: Recipe, soup: Soup, experiment: Path, cost: SoupCost) -> SoupRecord:
    """The ``soup.json`` contract (docs/architecture.md, "Soup directories"), as the record
    :mod:`soup_exp.artifacts.models` reads back; its ``json`` keeps the order keys are written in.
    Paths inside ``experiment`` are recorded relative to the soup's folder. ``cost`` is
    recorded beside ``inputs``, not in them: it varies from run to run and says nothing of
    what the soup is cooked from."""
    info = soup.recorded()
    members = [_ingredient(ctx, item) for item in info.pop("ingredients", ctx.pool.ingredients)]
    first = members[0] if members else None
    name = check_name(soup.name, f"recipe {recipe.name}: soup name")
    folder = ctx.store.soups_dir / name
    return SoupRecord.of({
        "name": name,
        "recipe": recipe.name,
        "kind": info.pop("kind", "soup"),
        "label": info.pop("label", recipe.label),
        "ingredients": [m.name for m in members],
        "ingredient_paths": [portable_path(m.path, folder, experiment) if m.path else None for m in members],
        "num_ingredients": len(members),
        "base_model": first.base_model if first else None,
        "classes": first.info.get("classes") if first else None,
        "params": recipe.params,
        **info,
        "cost": cost.as_json(),
        INPUTS_KEY: ctx.store.inputs(),
        "code_version": code_version(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }, folder)


def _ingredient(ctx: SoupContext, item: LazyWeights | str) -> LazyWeights:
    return item if isinstance(item, LazyWeights) else ctx.pool.model(str(item))


main = stage_entry("soup")

if __name__ == "__main__":
    main()
