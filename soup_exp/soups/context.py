"""What every recipe is handed: the ingredient pool and the tools to judge a soup.

The evaluator, the skeleton model and the held-out logits are built on first use, so a
recipe that only averages weights (uniform) never loads a dataset.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from soup_exp.artifacts import SOUP_FILE, WEIGHTS_FILE, is_finished_run, is_finished_soup
from soup_exp.errors import ConfigError
from soup_exp.soups.freshness import (
    as_json,
    describe_change,
    pool_identity,
    recorded_inputs,
    weights_identity,
)
from soup_exp.soups.greedy_rule import greedy_order
from soup_exp.soups.ingredients import Ingredient, resolve_ingredients
from soup_exp.soups.settings import SoupSettings
from soup_exp.utils.hashing import stable_hash
from soup_exp.utils.runtime import resolve_device
from soup_exp.vocabulary import HELD_OUT

log = logging.getLogger(__name__)

_ALWAYS = ("recipe", "params", "pool", "numerics")
BASE_NEEDS = {"lp": "an LP init (an `lp` ingredient, or hparams.init_from of the fine-tunes)",
              "zeroshot": "a zero-shot model in {zeroshot_dir}"}


class SoupContext:
    """The pool (``ingredients``, ``names``, ``scores``), held-out evaluation
    (``evaluate``, ``heldout_logits``, ``heldout_batches``), the zero-shot model, the
    soups cooked so far, a W&B ``run`` and where to keep resumable state."""

    def __init__(self, cfg: Any, ingredients: list[Ingredient], run: Any) -> None:
        self.cfg = cfg
        self.ingredients = ingredients
        self.names = [ing.name for ing in ingredients]
        self.pool = pool_identity(ingredients)  # the pool does not change while the stage runs
        self.settings = SoupSettings.from_config(cfg)
        self.soups_dir = self.settings.soups_dir
        self.run = run
        self.progress = self.settings.progress
        self.seed = self.settings.seed
        self.accumulate_dtype = self.settings.accumulate_dtype
        self.arithmetic = self.settings.arithmetic
        self.recipe = ""  # the recipe being cooked (set by the stage through begin())
        self.params: dict[str, Any] = {}
        self._used: dict[str, Any] = {}  # what the recipe read besides the pool: inputs of its soups
        self._state_files: set[Path] = set()  # resume state the recipe keeps while it cooks
        self.kept: set[str] = set()  # finished soups found fresh (not cooked again)

    def begin(self, recipe: Any) -> None:
        """Start cooking ``recipe`` (a :class:`~soup_exp.soups.recipe.Recipe`)."""
        self.recipe, self.params, self._used = recipe.name, dict(recipe.params), {}
        self._state_files = set()

    # ---- models ----------------------------------------------------------------------

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
        """The model that candidate state dicts are loaded into (on the evaluation device)."""
        return self._classifier[0]

    @property
    def zeroshot(self) -> Ingredient | None:
        """The zero-shot model (WiSE-FT and Model Stock start from it), or None."""
        self._used["zeroshot"] = self._zeroshot_identity()
        return self._zeroshot

    def _zeroshot_identity(self) -> list[int] | None:
        return weights_identity(self._zeroshot.path if self._zeroshot is not None else None)

    @cached_property
    def _zeroshot(self) -> Ingredient | None:
        path = self.settings.zeroshot_dir
        if not is_finished_run(path):
            return None
        return resolve_ingredients(path, kinds=None)[0]

    def base(self, which: str) -> Ingredient | None:
        """The model a task-vector recipe starts from: ``lp`` (the LP init the pool's
        fine-tunes started from) or ``zeroshot``; None when there is none."""
        if which == "zeroshot":
            return self.zeroshot
        if which != "lp":
            raise ConfigError(f"base {which!r}: expected one of {', '.join(BASE_NEEDS)}")
        lp = self._lp_init()
        self._used.setdefault("base", {})["lp"] = weights_identity(lp.path if lp is not None else None)
        return lp

    def base_needs(self, which: str) -> str:
        """What :meth:`base` needs to find ``which``, for the message when it is not there."""
        return BASE_NEEDS[which].format(zeroshot_dir=self.cfg.zeroshot_dir)

    def _lp_init(self) -> Ingredient | None:
        """The pool's ingredient the fine-tunes started from: at their recorded path, or (a
        moved or copied experiment) of their recorded init's name; else that path outside."""
        tuned = [ing for ing in self.ingredients if ing.info.get("kind") == "finetune"]
        sources = {str((ing.info.get("hparams") or {}).get("init_from")) for ing in tuned} - {"None"}
        if len(sources) == 1:
            source = Path(sources.pop())
            names = {_init_name(ing) for ing in tuned}
            for ing in self.ingredients:
                if ing.path is not None and ing.path.parent.resolve() == source.resolve():
                    return ing
            for ing in self.ingredients:
                if names == {ing.name}:
                    return ing
            if is_finished_run(source):
                self._use(source / WEIGHTS_FILE)
                return resolve_ingredients(source, kinds=None)[0]
        lps = [ing for ing in self.ingredients if ing.info.get("kind") == "lp"]
        return lps[0] if len(lps) == 1 else None

    def _use(self, *paths: Path | None) -> None:
        """Files read besides the pool (an analysis records them as its inputs)."""

    @property
    def kernel_device(self) -> torch.device:
        """Where per-tensor kernels compute (``soup.kernel_device``)."""
        return resolve_device(self.settings.kernel_device)

    def model(self, name: str) -> Ingredient:
        """A weight-space soup cooked earlier, an ingredient, or ``best_individual``."""
        if name == "best_individual":
            return self.ingredients[self.best_index]
        soup_dir = self.soups_dir / name
        if is_finished_soup(soup_dir) and (soup_dir / WEIGHTS_FILE).is_file():
            self._used.setdefault("models", {})[name] = self._soup_identity(name)
            return resolve_ingredients(soup_dir / WEIGHTS_FILE, kinds=None)[0]
        if name in self.names:
            return self.ingredients[self.names.index(name)]
        raise ConfigError(
            f"no model named {name!r}: it is neither a weight-space soup in {self.soups_dir} nor an "
            f"ingredient ({', '.join(self.names)}); list the recipe that makes it first"
        )

    # ---- held-out evaluation -----------------------------------------------------------

    @property
    def evaluator(self):
        """The held-out evaluator; a soup judged with it depends on the held-out data."""
        self._used["held_out"] = self.held_out_identity
        return self._evaluator

    @cached_property
    def _evaluator(self):
        from soup_exp.evaluation.evaluator import build_evaluator
        from soup_exp.evaluation.settings import EvalSettings

        return build_evaluator(EvalSettings.from_config(self.cfg), self._classifier[1].preprocess_val, self.classes,
                               names=[HELD_OUT])

    @cached_property
    def held_out_identity(self) -> str:
        """The held-out images and labels, the eval transform and the numerics scores are
        measured at: held-out accuracies recorded elsewhere are reused only when it matches."""
        return self._evaluator.scores_identity(HELD_OUT)

    @property
    def device(self) -> torch.device:
        return self.evaluator.device

    @cached_property
    def _heldout_accuracy(self):
        return self.evaluator.heldout_accuracy_fn(self.skeleton, HELD_OUT)

    def candidate_buffer(self) -> dict[str, torch.Tensor]:
        """The evaluation model's own tensors: a candidate written into them is scored
        without another copy of the model (see ``greedy_soup(candidate_buffer=...)``)."""
        self._heldout_accuracy  # noqa: B018 - moves the skeleton to the evaluation device first
        return self.skeleton.state_dict()

    def evaluate(self, state_dict: Mapping[str, torch.Tensor]) -> float:
        """Held-out accuracy of a candidate soup (the skeleton is reused, not copied)."""
        return float(self._heldout_accuracy(state_dict))

    def heldout_logits(self, index: int) -> torch.Tensor:
        """Raw held-out logits of ingredient ``index``, computed once and cached on disk."""
        return self.logits(self.ingredients[index], HELD_OUT)

    def logits(self, model: Ingredient, dataset: str) -> torch.Tensor:
        """Raw logits of ``model`` (an ingredient, the zero-shot model, a soup) on ``dataset``
        in dataset order; cached on disk by weights file, dataset and numerics."""
        from soup_exp.artifacts import read_weights
        from soup_exp.utils.io import atomic_save_safetensors

        path = None
        if model.path is not None:
            path = self.logits_dir / dataset / f"{model.name}-{self._weights_key(model, dataset)}.safetensors"
            if path.is_file():
                return read_weights(path)["logits"]
        self.skeleton.load_state_dict(model.state_dict(), strict=True)
        logits = self.evaluator.logits(self.skeleton, dataset)
        if path is not None:
            atomic_save_safetensors({"logits": logits}, path)
        return logits

    @property
    def logits_dir(self) -> Path:
        """Where logits are cached (shared by the soup and analyze stages)."""
        return self.soups_dir / ".cache" / "logits"

    def logits_accuracy(self, logits: torch.Tensor) -> float:
        """Held-out accuracy of raw logits (rows in held-out order)."""
        return self.evaluator.accuracy_from_logits(logits, HELD_OUT)

    def heldout_member_logits(self, index: int) -> torch.Tensor:
        """What an ensemble averages of ingredient ``index`` on held-out, as the evaluate
        stage does (``eval.ensemble_logits``)."""
        return self.evaluator.member_logits(self.heldout_logits(index), HELD_OUT)

    def ensemble_accuracy(self, mean_member_logits: torch.Tensor) -> float:
        """Held-out accuracy of an ensemble from its averaged :meth:`heldout_member_logits`."""
        return self.evaluator.ensemble_accuracy(mean_member_logits, HELD_OUT)

    def heldout_batches(self, batch_size: int, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Shuffled held-out ``(images, targets)`` on the device; the order is seeded by
        ``seed`` and epoch (so the seed is an input of the soup)."""
        self._used["seed"] = self.seed
        generator = torch.Generator().manual_seed(self.seed * 1000 + epoch)
        return self.evaluator.batches(HELD_OUT, batch_size, shuffle=True, generator=generator)

    def _weights_key(self, ing: Ingredient, dataset: str) -> str:
        stat = ing.path.stat() if ing.path is not None else None
        return stable_hash({"path": str(ing.path), "size": stat.st_size if stat else None,
                            "mtime": stat.st_mtime_ns if stat else None,
                            "data": self.evaluator.dataset(dataset).identity(),
                            "transform": self.evaluator.transform.key,
                            "precision": self.evaluator.precision})

    @property
    def scores(self) -> list[float]:
        """Held-out accuracy of each ingredient on this held-out data at the numerics
        candidates are scored at: its ingredient.json when measured alike, else evaluated
        once (cached logits)."""
        self._used["scores"] = self._scores
        return self._scores

    @cached_property
    def _scores(self) -> list[float]:
        from soup_exp.evaluation.evaluator import configured_numerics
        from soup_exp.evaluation.settings import EvalSettings

        numerics = configured_numerics(EvalSettings.from_config(self.cfg))
        scores = []
        for i, ing in enumerate(self.ingredients):
            recorded = ing.held_out_accuracy_at(numerics, self.held_out_identity)
            if recorded is None:
                log.info("held-out accuracy of %s is not recorded for this held-out data at %s: evaluating it",
                         ing.name, numerics)
                recorded = self.logits_accuracy(self.heldout_logits(i))
            scores.append(recorded)
        return scores

    @property
    def best_index(self) -> int:
        """The ingredient with the best held-out accuracy (ties as the greedy order breaks them)."""
        return greedy_order(self.names, self.scores)[0]

    # ---- outputs ------------------------------------------------------------------------

    def inputs(self) -> dict[str, Any]:
        """What the soups of the current recipe are cooked from (see :mod:`.freshness`)."""
        return as_json({"recipe": self.recipe, "params": self.params, "pool": self.pool,
                         "numerics": {"accumulate_dtype": str(self.accumulate_dtype).removeprefix("torch."),
                                      "arithmetic": self.arithmetic},
                         **self._used})

    def finished(self, name: str) -> bool:
        """Whether soup ``name`` is cooked from exactly the current inputs. A stale one is
        unmarked (its soup.json removed, so nothing evaluates it meanwhile) and the log says
        what changed; the caller cooks it again."""
        soup_file = self.soups_dir / name / SOUP_FILE
        if not soup_file.is_file():
            return False
        recorded = recorded_inputs(soup_file)
        reason = "it records no inputs (cooked by an older soup-exp)" if recorded is None else None
        if recorded is not None:
            current = self._current_inputs(recorded)
            if current == recorded:
                self.kept.add(name)
                return True
            reason = describe_change(recorded, current)
        log.info("soup '%s' in %s is stale: %s; cooking it again", name, soup_file.parent, reason)
        soup_file.unlink()
        return False

    def _current_inputs(self, recorded: Mapping[str, Any]) -> dict[str, Any]:
        """The current value of every input ``recorded`` names, and of nothing else (a
        uniform soup is checked without building the held-out evaluator)."""
        reads = {
            "zeroshot": self._zeroshot_identity,
            "held_out": lambda: self.held_out_identity,
            "scores": lambda: self._scores,
            "seed": lambda: self.seed,
            "models": lambda: {name: self._soup_identity(name) for name in recorded["models"]},
            "base": lambda: {"lp": weights_identity(lp.path if (lp := self._lp_init()) is not None else None)},
        }
        base = {k: v for k, v in self.inputs().items() if k in _ALWAYS}
        return as_json({**base, **{k: reads[k]() for k in recorded if k in reads}})

    def _soup_identity(self, name: str) -> list[int] | None:
        weights = self.soups_dir / name / WEIGHTS_FILE
        return weights_identity(weights) if is_finished_soup(weights.parent) else None

    def state_file(self, name: str = "state.json") -> Path:
        """Where the current recipe may keep state to resume from after preemption; the
        stage removes it once the recipe's soups are written (:meth:`clear_state`)."""
        path = self.soups_dir / self.recipe / name
        self._state_files.add(path)
        return path

    def clear_state(self) -> None:
        """Remove the state files the current recipe asked for: its soups are written."""
        for path in self._state_files:
            path.unlink(missing_ok=True)
        self._state_files.clear()

    def log_table(self, key: str, rows: list[dict[str, Any]]) -> None:
        """A W&B table under ``<recipe>/<key>`` from a list of same-keyed dicts."""
        if rows:
            columns = list(rows[0])
            self.run.log_table(f"{self.recipe}/{key}", columns, [[row.get(c) for c in columns] for row in rows])


def _init_name(ing: Ingredient) -> Any:
    """The name a fine-tune recorded of the ingredient it started from (``metrics.init.name``)."""
    init = (ing.info.get("metrics") or {}).get("init")
    return init.get("name") if isinstance(init, Mapping) else None
