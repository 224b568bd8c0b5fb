"""`soup-exp evaluate`: every model of an experiment on the eval suite -> results.jsonl.

Models are found on disk by their contracts (see docs/architecture.md): the zero-shot
model under ``<out_dir>/zeroshot/``, ingredients ``<ingredients_dir>/*/ingredient.json``
and soups ``<soups_dir>/*/soup.json``. Weight models are evaluated ``models_per_pass`` at
a time (one read of each dataset per group); logit ensembles average their members' raw
logits. A model whose row already exists for the same weights files (path, size, mtime)
and datasets is skipped, so an interrupted or repeated evaluation resumes.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from soup_exp.errors import ConfigError, SoupExpError
from soup_exp.eval.evaluator import Evaluator, avg_shifts, build_evaluator
from soup_exp.utils.config import to_plain
from soup_exp.utils.hashing import stable_hash
from soup_exp.utils.io import read_json

log = logging.getLogger(__name__)

WEIGHTS_FILE = "model.safetensors"
INGREDIENT_FILE = "ingredient.json"
SOUP_FILE = "soup.json"
ZEROSHOT_DIR = "zeroshot"


@dataclass
class ModelEntry:
    """One evaluable model: a weights file, or (for an ensemble) its members' files."""

    name: str
    kind: str
    path: Path
    weights: list[Path]
    recipe: str | None = None
    info: dict = field(default_factory=dict)
    ensemble: bool = False

    def fingerprint(self) -> str:
        """Identity of the weights evaluated: path, size and mtime of each file."""
        stats = []
        for p in self.weights:
            st = os.stat(p)
            stats.append((str(p.resolve()), st.st_size, st.st_mtime_ns))
        return stable_hash(stats, length=20)


class ModelDiscoveryError(SoupExpError):
    """A soup or ensemble whose files do not follow the soup.json contract."""


# ---- discovery ----------------------------------------------------------------------


def _weights_of(directory: Path, info_file: Path) -> Path:
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise ModelDiscoveryError(f"{info_file} exists but {weights} does not; the run directory is damaged")
    return weights


def _ingredient_entry(info_file: Path, default_kind: str) -> ModelEntry:
    info = read_json(info_file)
    directory = info_file.parent
    return ModelEntry(
        name=str(info.get("name") or directory.name),
        kind=str(info.get("kind") or default_kind),
        path=directory,
        weights=[_weights_of(directory, info_file)],
        info=info,
    )


def discover_ingredients(cfg: Mapping) -> list[ModelEntry]:
    """Zero-shot model (if present) and finished ingredients, in name order."""
    entries = []
    zeroshot_info = Path(cfg["out_dir"]) / ZEROSHOT_DIR / INGREDIENT_FILE
    if zeroshot_info.is_file():
        entries.append(_ingredient_entry(zeroshot_info, "zeroshot"))
    root = Path(cfg["ingredients_dir"])
    if root.is_dir():
        for run in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if (run / INGREDIENT_FILE).is_file():
                entries.append(_ingredient_entry(run / INGREDIENT_FILE, "individual"))
            elif (run / WEIGHTS_FILE).exists() or any(run.iterdir()):
                log.info("skipping %s: no %s yet (an unfinished run)", run, INGREDIENT_FILE)
    return entries


def _resolve_member(member: Any, soup_dir: Path, info: Mapping, known: Mapping[str, ModelEntry]) -> Path:
    """A member is an ingredient name, an index into ``ingredients``, or a path."""
    if isinstance(member, int):
        paths = info.get("ingredient_paths") or []
        names = info.get("ingredients") or []
        member = paths[member] if member < len(paths) else names[member] if member < len(names) else member
    member = str(member)
    if member in known:
        return known[member].weights[0]
    recorded = dict(zip(info.get("ingredients") or [], info.get("ingredient_paths") or [], strict=False))
    for candidate in (Path(recorded.get(member, member)), soup_dir / member):
        if candidate.is_dir() and (candidate / WEIGHTS_FILE).is_file():
            return candidate / WEIGHTS_FILE
        if candidate.is_file() and candidate.suffix == ".safetensors":
            return candidate
    raise ModelDiscoveryError(
        f"{soup_dir / SOUP_FILE}: ensemble member {member!r} is neither a known ingredient "
        f"({', '.join(sorted(known)) or 'none found'}) nor a path to {WEIGHTS_FILE}"
    )


def discover_soups(cfg: Mapping, known: Mapping[str, ModelEntry]) -> list[ModelEntry]:
    """Soups (weights) and output-space ensembles (``members``), in name order."""
    root = Path(cfg["soups_dir"])
    entries = []
    for info_file in sorted(root.glob(f"*/{SOUP_FILE}")) if root.is_dir() else []:
        info, soup_dir = read_json(info_file), info_file.parent
        name = str(info.get("name") or soup_dir.name)
        recipe = info.get("recipe")
        members = info.get("members")
        if members is not None:
            if not members:
                raise ModelDiscoveryError(f"{info_file}: 'members' is empty")
            weights = [_resolve_member(m, soup_dir, info, known) for m in members]
            entries.append(ModelEntry(name, str(info.get("kind") or "ensemble"), soup_dir, weights,
                                      recipe, info, ensemble=True))
        else:
            entries.append(ModelEntry(name, str(info.get("kind") or "soup"), soup_dir,
                                      [_weights_of(soup_dir, info_file)], recipe, info))
    return entries


def discover_models(cfg: Mapping) -> list[ModelEntry]:
    """Every evaluable model of the experiment; names must be unique."""
    ingredients = discover_ingredients(cfg)
    known = {e.name: e for e in ingredients}
    entries = ingredients + discover_soups(cfg, known)
    seen: dict[str, Path] = {}
    for entry in entries:
        if entry.name in seen:
            raise ModelDiscoveryError(
                f"two models are named {entry.name!r}: {seen[entry.name]} and {entry.path}; "
                "result rows are keyed by name, rename one"
            )
        seen[entry.name] = entry.path
    return entries


def select_models(entries: Sequence[ModelEntry], wanted: Any) -> list[ModelEntry]:
    """``models=all`` or a list of names (unknown names are an error listing the choices)."""
    if wanted is None or wanted == "all":
        return list(entries)
    names = [wanted] if isinstance(wanted, str) else list(wanted)
    by_name = {e.name: e for e in entries}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise ConfigError(f"models={names}: no model named {unknown}; found: {', '.join(by_name) or 'none'}")
    return [by_name[n] for n in names]


# ---- evaluation ---------------------------------------------------------------------


def _load(skeleton: torch.nn.Module, weights: Path) -> torch.nn.Module:
    from safetensors.torch import load_file

    from soup_exp.models.classifier import load_state_dict_strict

    model = copy.deepcopy(skeleton)
    load_state_dict_strict(model, load_file(str(weights)), str(weights))
    return model


def _chunks(items: Sequence, size: int) -> list[Sequence]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def ensemble_accuracies(
    evaluator: Evaluator, skeleton: torch.nn.Module, weights: Sequence[Path], models_per_pass: int
) -> dict[str, float]:
    """Accuracy of the logit ensemble of ``weights``: member logits (projected or raw, as
    the evaluator's ``ensemble_logits`` says) summed over member groups of
    ``models_per_pass`` (so members need not fit in memory together), then averaged."""
    sums: dict[str, torch.Tensor] = {}
    for group in _chunks(list(weights), models_per_pass):
        models = {str(i): _load(skeleton, w) for i, w in enumerate(group)}
        for name in evaluator.names:
            for raw in evaluator.logits_many(models, name).values():
                logits = evaluator.member_logits(raw, name)
                sums[name] = logits.clone() if name not in sums else sums[name].add_(logits)
        del models
    accuracies = {name: evaluator.ensemble_accuracy(total / len(weights), name) for name, total in sums.items()}
    mean_shift = avg_shifts(accuracies, evaluator.shifts)
    if mean_shift is not None:
        accuracies["avg_shifts"] = mean_shift
    return accuracies


def _row(entry: ModelEntry, accuracies: Mapping[str, float], fingerprint: str, evaluator: Evaluator,
         previous: Mapping | None) -> dict:
    merged = dict(accuracies)
    if previous and (previous.get("meta") or {}).get("weights") == fingerprint:
        earlier = (previous.get("meta") or {}).get("datasets") or {}
        keep = {k: previous[k] for k in earlier if k not in merged and k in previous}
        merged = {**keep, **merged}
        mean_shift = avg_shifts(merged, evaluator.shifts)
        if mean_shift is not None:
            merged["avg_shifts"] = mean_shift
    info = entry.info
    members = info.get("ingredients") or info.get("members")
    row: dict[str, Any] = {"name": entry.name, "kind": entry.kind}
    recipe = entry.recipe or info.get("recipe")
    if recipe is not None:
        row["recipe"] = recipe
    row.update(merged)
    if members is not None:
        row["num_ingredients"] = len(members)
    if info.get("alpha") is not None:
        row["alpha"] = info["alpha"]
    row["path"] = str(entry.path)
    earlier = ((previous or {}).get("meta") or {}).get("datasets") or {}
    sizes = {name: len(evaluator.dataset(name)) for name in evaluator.names}
    row["meta"] = {
        "weights": fingerprint,
        "base_model": info.get("base_model"),
        "eval_transform": " ".join(evaluator.transform.key.split()),
        "datasets": {**{k: v for k, v in earlier.items() if k in merged}, **sizes},
    }
    return row


def _up_to_date(previous: Mapping | None, fingerprint: str, datasets: Sequence[str]) -> bool:
    if not previous or (previous.get("meta") or {}).get("weights") != fingerprint:
        return False
    return all(isinstance(previous.get(name), int | float) for name in datasets)


def check_data(cfg: DictConfig) -> list[dict]:
    """``check_data=true``: report every dataset of the suite (layout, class folders, image
    counts); ``check_data=verify`` also decodes every image. Fails listing broken ones."""
    from dataclasses import asdict

    from soup_exp.data.checker import check_datasets, raise_on_failure, render_table

    verify = str(cfg.check_data).lower() == "verify"
    reports = check_datasets(cfg.data, list(cfg.eval.datasets), verify=verify,
                             num_threads=max(1, int(cfg.get("num_workers") or 1)))
    print(render_table(reports))
    raise_on_failure(reports)
    return [asdict(r) for r in reports]


def run_evaluate(cfg: DictConfig) -> list[dict]:
    """Evaluate the selected models (``cfg.models``) and upsert their rows into
    ``cfg.results_file``; returns the rows written this time."""
    if cfg.get("check_data"):
        return check_data(cfg)

    from soup_exp.data.registry import class_space
    from soup_exp.models import build_classifier
    from soup_exp.tracking.results import ResultsStore
    from soup_exp.tracking.wandb_run import start_run

    eval_cfg = cfg.eval
    datasets = list(eval_cfg.datasets)
    force = bool(eval_cfg.get("force", False))
    models_per_pass = max(1, int(eval_cfg.get("models_per_pass", 4)))
    store = ResultsStore(cfg.results_file)
    previous = {row["name"]: row for row in store.rows()}

    entries = select_models(discover_models(cfg), to_plain(cfg.get("models", "all")))
    if not entries:
        log.warning("no models found under %s, %s or %s; nothing to evaluate",
                    Path(cfg.out_dir) / ZEROSHOT_DIR, cfg.ingredients_dir, cfg.soups_dir)
        return []
    fingerprints = {e.name: e.fingerprint() for e in entries}
    todo = [e for e in entries if force or not _up_to_date(previous.get(e.name), fingerprints[e.name], datasets)]
    for entry in entries:
        if entry not in todo:
            log.info("%s: already evaluated for these weights (eval.force=true re-evaluates)", entry.name)
    if not todo:
        return []

    classes = class_space(cfg.data)
    skeleton, backbone = build_classifier(cfg.model, classes.num_classes, pretrained=False)
    evaluator = build_evaluator(cfg, backbone.preprocess_val, classes, datasets)
    rows: list[dict] = []

    with start_run(cfg, "evaluate", name=f"{cfg.name}-evaluate") as run:  # finishes it, failed or not
        def record(entry: ModelEntry, accuracies: Mapping[str, float]) -> None:
            row = _row(entry, accuracies, fingerprints[entry.name], evaluator, previous.get(entry.name))
            rows.append(store.upsert(row, config=cfg))
            log.info("%s: %s", entry.name, ", ".join(f"{k} {100 * v:.2f}" for k, v in accuracies.items()))
            run.log({f"{entry.name}/{k}": v for k, v in accuracies.items()})

        singles = [e for e in todo if not e.ensemble]
        for group in _chunks(singles, models_per_pass):
            models = {e.name: _load(skeleton, e.weights[0]) for e in group}
            results = evaluator.evaluate(models)
            del models
            for entry in group:
                record(entry, results[entry.name])
        for entry in (e for e in todo if e.ensemble):
            record(entry, ensemble_accuracies(evaluator, skeleton, entry.weights, models_per_pass))
        columns = sorted({k for row in rows for k in row if k not in {"meta", "path"}},
                         key=lambda k: (k not in ("name", "kind", "recipe"), k))
        run.log_table("results", columns, [[row.get(c) for c in columns] for row in rows])
        run.summary({"models_evaluated": len(rows), "results_file": str(cfg.results_file)})
    log.info("wrote %d result rows to %s", len(rows), cfg.results_file)
    return rows
