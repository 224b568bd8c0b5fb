"""`soup-exp soup`: cook every recipe of ``cfg.recipe`` from one ingredient pool.

Each recipe is a function in :data:`RECIPES` writing one or more soup directories under
``cfg.soups_dir``; finished soups (``soup.json`` present) are skipped, the greedy soup
resumes mid-way, and the held-out logits that ensembles and scores need are cached on
disk per ingredient. The evaluator, skeleton and W&B run are created only when needed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from soup_exp.errors import ConfigError
from soup_exp.soups.ensemble import greedy_ensemble, logit_ensemble
from soup_exp.soups.greedy import greedy_order, greedy_soup
from soup_exp.soups.ingredients import Ingredient, load_ingredients, resolve_ingredients
from soup_exp.soups.learned import learned_soup
from soup_exp.soups.model_stock import model_stock
from soup_exp.soups.outputs import WEIGHTS_FILE, is_finished, soup_record, write_soup
from soup_exp.soups.streaming import check_arithmetic
from soup_exp.soups.uniform import uniform_soup
from soup_exp.soups.wise_ft import wise_ft
from soup_exp.utils.config import config_get, to_plain
from soup_exp.utils.hashing import stable_hash

log = logging.getLogger(__name__)

HELD_OUT = "ImageNet2p"
ACCUMULATE_DTYPES = {"float32": torch.float32, "float64": torch.float64}


class SoupContext:
    """What recipes share: config, ingredients, output places, and lazily built tools."""

    def __init__(self, cfg: Any, ingredients: list[Ingredient], run: Any) -> None:
        self.cfg = cfg
        self.ingredients = ingredients
        self.names = [ing.name for ing in ingredients]
        self.soups_dir = Path(cfg.soups_dir)
        self.run = run
        self.progress = bool(config_get(cfg, "progress", True))
        dtype = str(config_get(cfg, "recipe.accumulate_dtype", "float32"))
        if dtype not in ACCUMULATE_DTYPES:
            raise ConfigError(f"recipe.accumulate_dtype={dtype!r}: use one of {sorted(ACCUMULATE_DTYPES)}")
        self.accumulate_dtype = ACCUMULATE_DTYPES[dtype]
        self.arithmetic = check_arithmetic(str(config_get(cfg, "recipe.arithmetic", "sum")))
        self.made: dict[str, Path] = {}

    # ---- lazily built tools -------------------------------------------------------------

    @cached_property
    def classes(self):
        from soup_exp.data.registry import class_space

        return class_space(self.cfg.data)

    @cached_property
    def _classifier(self):
        from soup_exp.models import build_classifier

        return build_classifier(self.cfg.model, self.classes.num_classes, pretrained=False)

    @property
    def skeleton(self) -> torch.nn.Module:
        return self._classifier[0]

    @cached_property
    def evaluator(self):
        from soup_exp.eval.evaluator import build_evaluator

        return build_evaluator(self.cfg, self._classifier[1].preprocess_val, self.classes, names=[HELD_OUT])

    @cached_property
    def heldout_accuracy(self) -> Callable[[Mapping[str, torch.Tensor]], float]:
        return self.evaluator.heldout_accuracy_fn(self.skeleton, HELD_OUT)

    def heldout_logits(self, index: int) -> torch.Tensor:
        """Raw held-out logits of one ingredient, computed once and cached on disk."""
        from safetensors.torch import load_file

        from soup_exp.utils.io import atomic_save_safetensors

        ing = self.ingredients[index]
        path = self._logits_cache / f"{ing.name}-{self._weights_key(ing)}.safetensors"
        if path.is_file():
            return load_file(str(path))["logits"]
        self.skeleton.load_state_dict(ing.state_dict(), strict=True)
        logits = self.evaluator.logits(self.skeleton, HELD_OUT)
        atomic_save_safetensors({"logits": logits}, path)
        return logits

    @property
    def _logits_cache(self) -> Path:
        return self.soups_dir / ".cache" / "heldout_logits"

    def _weights_key(self, ing: Ingredient) -> str:
        stat = ing.path.stat() if ing.path is not None else None
        return stable_hash({"path": str(ing.path), "size": stat.st_size if stat else None,
                            "mtime": stat.st_mtime_ns if stat else None, "data": _plain(config_get(self.cfg, "data"))})

    @cached_property
    def scores(self) -> list[float]:
        """Held-out accuracy of each ingredient: its ingredient.json, else its cached logits."""
        scores = []
        for i, ing in enumerate(self.ingredients):
            if ing.held_out_accuracy is None:
                log.info("held-out accuracy of %s is not in its metadata: evaluating it", ing.name)
                scores.append(self.evaluator.accuracy_from_logits(self.heldout_logits(i), HELD_OUT))
            else:
                scores.append(ing.held_out_accuracy)
        return scores

    def logits_accuracy(self, logits: torch.Tensor) -> float:
        return self.evaluator.accuracy_from_logits(logits, HELD_OUT)

    # ---- outputs --------------------------------------------------------------------------

    def dir(self, name: str) -> Path:
        return self.soups_dir / name

    def finished(self, name: str) -> bool:
        if is_finished(self.dir(name)):
            log.info("soup '%s' already finished in %s: skipping (delete the folder to redo it)",
                     name, self.dir(name))
            self.made[name] = self.dir(name)
            return True
        return False

    def write(self, record: dict[str, Any], state_dict=None, weights_from: Path | None = None) -> Path:
        out = write_soup(self.dir(record["name"]), record, state_dict, weights_from)
        self.made[record["name"]] = out
        held = record.get("held_out_accuracy")
        log.info("%s -> %s%s", record["name"], out, f" (held-out {held:.4f})" if held is not None else "")
        if held is not None:
            self.run.summary({f"{record['name']}/held_out_accuracy": held})
        return out

    def zeroshot(self) -> Path | None:
        path = Path(config_get(self.cfg, "recipe.zeroshot") or Path(self.cfg.out_dir) / "zeroshot")
        if (path / WEIGHTS_FILE).is_file() or path.suffix == ".safetensors" and path.is_file():
            return path
        return None

    def model_path(self, name: str) -> Path:
        """A soup made here (or earlier) or an ingredient, by name: what WiSE-FT interpolates."""
        soup = self.dir(name) / WEIGHTS_FILE
        if soup.is_file():
            return soup
        for ing in self.ingredients:
            if ing.name == name and ing.path is not None:
                return ing.path
        raise ConfigError(
            f"recipe.wise_ft.of names '{name}', which is neither a weight-space soup in "
            f"{self.soups_dir} nor an ingredient ({', '.join(self.names)}); list it after the recipe that makes it."
        )


def _plain(node: Any) -> Any:
    try:
        return to_plain(node)
    except Exception:  # an unresolvable key only weakens the cache key
        return str(node)


# ---- recipes ------------------------------------------------------------------------------

Recipe = Callable[[SoupContext], None]


def cook_uniform(ctx: SoupContext) -> None:
    if ctx.finished("uniform"):
        return
    n = len(ctx.ingredients)
    soup = uniform_soup(ctx.ingredients, accumulate_dtype=ctx.accumulate_dtype, progress=ctx.progress,
                        arithmetic=ctx.arithmetic)
    ctx.write(soup_record("uniform", "uniform", "soup", ctx.ingredients, coefficients=[1.0 / n] * n), soup)


def cook_greedy(ctx: SoupContext) -> None:
    if ctx.finished("greedy"):
        return
    tolerance = float(config_get(ctx.cfg, "recipe.greedy.tolerance", 0.0))
    evaluate = ctx.heldout_accuracy  # moves the skeleton to the device first
    result = greedy_soup(ctx.ingredients, ctx.scores, evaluate, tolerance=tolerance,
                         state_file=ctx.dir("greedy") / "greedy_state.json",
                         accumulate_dtype=ctx.accumulate_dtype, candidate_buffer=ctx.skeleton.state_dict(),
                         progress=ctx.progress, arithmetic=ctx.arithmetic)
    chosen = [ctx.ingredients[i] for i in result.chosen]
    ctx.run.log_table("greedy/history", ["step", "name", "individual_accuracy", "soup_accuracy", "accepted", "num_ingredients"],
                      [[h["step"], h["name"], h["individual_accuracy"], h["accuracy"], h["accepted"], h["num_ingredients"]]
                       for h in result.history])
    ctx.write(soup_record("greedy", "greedy", "soup", chosen, coefficients=[1.0 / len(chosen)] * len(chosen),
                          history=result.history, held_out_accuracy=result.accuracy, tolerance=tolerance,
                          pool=ctx.names), result.state_dict)


def _cook_learned(mode: str) -> Recipe:
    name = f"learned_{mode}"

    def cook(ctx: SoupContext) -> None:
        if ctx.finished(name):
            return
        lcfg = config_get(ctx.cfg, "recipe.learned", {}) or {}
        batch_size = int(lcfg.get("batch_size", 256))
        seed = int(config_get(ctx.cfg, "seed", 0))

        def batches(epoch: int):
            generator = torch.Generator().manual_seed(seed * 1000 + epoch)
            return ctx.evaluator.batches(HELD_OUT, batch_size, shuffle=True, generator=generator)

        def on_step(point: dict[str, float]) -> None:
            ctx.run.log({f"{name}/loss": point["loss"], f"{name}/step": point["step"]})

        result = learned_soup(ctx.ingredients, ctx.skeleton, batches, mode=mode,
                              epochs=int(lcfg.get("epochs", 5)), lr=float(lcfg.get("lr", 0.05)),
                              weight_decay=float(lcfg.get("weight_decay", 0.0)),
                              device=ctx.evaluator.device, on_step=on_step, progress=ctx.progress)
        held_out = ctx.heldout_accuracy(result.state_dict)
        if mode == "per_model":
            rows = [[n, c] for n, c in zip(result.names, result.coefficients, strict=True)]
            ctx.run.log_table(f"{name}/coefficients", ["ingredient", "coefficient"], rows)
        else:
            rows = [[key, n, c] for key, row in result.coefficients.items()
                    for n, c in zip(result.names, row, strict=True)]
            ctx.run.log_table(f"{name}/coefficients", ["parameter", "ingredient", "coefficient"], rows)
        ctx.run.log_table(f"{name}/curve", ["step", "epoch", "loss"],
                          [[p["step"], p["epoch"], p["loss"]] for p in result.curve])
        ctx.run.summary({f"{name}/beta": result.beta})
        ctx.write(soup_record(name, name, "soup", ctx.ingredients, coefficients=result.coefficients,
                              beta=result.beta, curve=result.curve, held_out_accuracy=held_out,
                              placement=result.placement), result.state_dict)

    return cook


def cook_best_individual(ctx: SoupContext) -> None:
    if ctx.finished("best_individual"):
        return
    best = greedy_order(ctx.names, ctx.scores)[0]
    ing = ctx.ingredients[best]
    record = soup_record("best_individual", "best_individual", "individual", [ing], coefficients=[1.0],
                         held_out_accuracy=ctx.scores[best], pool=ctx.names)
    if ing.path is not None:
        ctx.write(record, weights_from=ing.path)
    else:
        ctx.write(record, ing.state_dict())


def cook_ensemble(ctx: SoupContext) -> None:
    if ctx.finished("ensemble"):
        return
    result = logit_ensemble(len(ctx.ingredients), ctx.heldout_logits, ctx.logits_accuracy)
    n = len(ctx.ingredients)
    ctx.write(soup_record("ensemble", "ensemble", "ensemble", ctx.ingredients, members=ctx.names,
                          coefficients=[1.0 / n] * n, held_out_accuracy=result.accuracy))


def cook_greedy_ensemble(ctx: SoupContext) -> None:
    if ctx.finished("greedy_ensemble"):
        return
    tolerance = float(config_get(ctx.cfg, "recipe.greedy.tolerance", 0.0))
    result = greedy_ensemble(ctx.names, ctx.scores, ctx.heldout_logits, ctx.logits_accuracy,
                             tolerance=tolerance, progress=ctx.progress)
    members = [ctx.ingredients[i] for i in result.members]
    ctx.run.log_table("greedy_ensemble/history", ["step", "name", "individual_accuracy", "ensemble_accuracy", "accepted"],
                      [[h["step"], h["name"], h["individual_accuracy"], h["accuracy"], h["accepted"]]
                       for h in result.history])
    ctx.write(soup_record("greedy_ensemble", "greedy_ensemble", "ensemble", members,
                          members=[m.name for m in members], coefficients=[1.0 / len(members)] * len(members),
                          history=result.history, held_out_accuracy=result.accuracy, pool=ctx.names))


def wise_ft_name(of: str, alpha: float) -> str:
    return f"wise_ft_{of}_a{alpha:.2f}"


def cook_wise_ft(ctx: SoupContext) -> None:
    zeroshot = ctx.zeroshot()
    if zeroshot is None:
        log.warning("WiSE-FT skipped: no zero-shot model at %s (run `soup-exp finetune` for the "
                    "zero-shot job, or set recipe.zeroshot)", Path(ctx.cfg.out_dir) / "zeroshot")
        return
    alphas = [float(a) for a in config_get(ctx.cfg, "recipe.wise_ft.alphas", [0.5])]
    zs = resolve_ingredients(zeroshot, kinds=None)[0]
    for of in config_get(ctx.cfg, "recipe.wise_ft.of", []) or []:
        todo = [a for a in alphas if not ctx.finished(wise_ft_name(of, a))]
        if not todo:
            continue
        source = resolve_ingredients(ctx.model_path(of), kinds=None)[0]
        for alpha, state_dict in wise_ft(source, zs, todo, accumulate_dtype=ctx.accumulate_dtype):
            record = soup_record(wise_ft_name(of, alpha), of, "wise_ft", [zs, source],
                                 coefficients=[1.0 - alpha, alpha], alpha=alpha, interpolated=of)
            ctx.write(record, state_dict)


def cook_model_stock(ctx: SoupContext) -> None:
    if ctx.finished("model_stock"):
        return
    zeroshot = ctx.zeroshot()
    if zeroshot is None:
        log.warning("Model Stock skipped: it needs the pretrained (zero-shot) model at %s",
                    Path(ctx.cfg.out_dir) / "zeroshot")
        return
    result = model_stock(ctx.ingredients, zeroshot, progress=ctx.progress)
    ctx.write(soup_record("model_stock", "model_stock", "soup", ctx.ingredients, coefficients=result.ratios,
                          pretrained=str(zeroshot)), result.state_dict)


RECIPES: dict[str, Recipe] = {
    "uniform": cook_uniform,
    "greedy": cook_greedy,
    "learned_per_model": _cook_learned("per_model"),
    "learned_by_layer": _cook_learned("by_layer"),
    "best_individual": cook_best_individual,
    "ensemble": cook_ensemble,
    "greedy_ensemble": cook_greedy_ensemble,
    "wise_ft": cook_wise_ft,
    "model_stock": cook_model_stock,
}


def run_soups(cfg: Any, run: Any = None) -> dict[str, Path]:
    """Cook ``cfg.recipe.recipes`` in order; returns soup name -> directory."""
    recipes = list(config_get(cfg, "recipe.recipes", []) or [])
    unknown = [r for r in recipes if r not in RECIPES]
    if unknown:
        raise ConfigError(f"unknown recipe(s) {unknown} in recipe.recipes; available: {', '.join(RECIPES)}")
    spec = config_get(cfg, "recipe.ingredients") or cfg.ingredients_dir
    spec = list(spec) if not isinstance(spec, str) else spec
    ingredients = load_ingredients(spec)
    log.info("souping %d ingredients from %s into %s: %s", len(ingredients), spec, cfg.soups_dir,
             ", ".join(recipes))
    own_run = run is None
    if own_run:
        from soup_exp.tracking import start_run

        run = start_run(cfg, "soup", name=f"{cfg.name}-soup")
    ctx = SoupContext(cfg, ingredients, run)
    try:
        for recipe in recipes:
            RECIPES[recipe](ctx)
    finally:
        if own_run:
            run.finish()
    log.info("soups written to %s: %s", ctx.soups_dir, ", ".join(ctx.made))
    return dict(ctx.made)
