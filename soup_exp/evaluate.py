"""`soup-exp evaluate`: every model of an experiment on the eval suite -> results.jsonl.

Models are found on disk by their contracts (:mod:`soup_exp.artifacts`): the zero-shot
model in ``zeroshot_dir``, the finished runs of ``soup.pool`` (the ingredients the soup
stage reads; ``ingredients_dir`` by default) and soups under ``soups_dir``. Weight models are evaluated ``models_per_pass`` at a time (one read of each
dataset per group); logit ensembles average their members' logits. A model whose row
already exists for the same weights (path, size, mtime), datasets (files, labels,
projection) and eval transform is skipped, so an interrupted or repeated evaluation resumes.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from soup_exp.artifacts import (
    ArtifactError,
    Ensemble,
    Model,
    is_finished_run,
    is_finished_soup,
    load_weights,
    read_models,
)
from soup_exp.artifacts.correctness import Hits
from soup_exp.artifacts.results import ResultsStore, with_avg_shifts
from soup_exp.errors import ConfigError
from soup_exp.evaluation.evaluator import (
    EnsembleSums,
    Evaluator,
    PerImageHits,
    build_evaluator,
    evaluation_suite,
)
from soup_exp.evaluation.settings import EvalSettings
from soup_exp.soups.ingredients import all_finite
from soup_exp.stages.entry import stage_entry
from soup_exp.utils.config import to_plain
from soup_exp.utils.hashing import file_stamp, stable_hash
from soup_exp.utils.io import remove_stale_temp_files
from soup_exp.vocabulary import ACCURACY_KEYS, AVG_SHIFTS

log = logging.getLogger(__name__)

# soup.json fields a result row carries, so the report needs no soup directory
ROW_FIELDS = ("recipe", "label", "alpha", "interpolated")


def fingerprint(model: Model) -> str:
    """Identity of the weights evaluated: path, size and mtime of each file."""
    return stable_hash([(str(p.resolve()), *file_stamp(p)) for p in model.files], length=20)


def discover_models(cfg: Mapping) -> list[Model]:
    """Every evaluable model of the experiment (:func:`~soup_exp.artifacts.read_models`)."""
    return read_models(cfg["zeroshot_dir"], to_plain(cfg["soup"]["pool"]), cfg["soups_dir"])


def select_models(entries: Sequence[Model], wanted: Any) -> list[Model]:
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


class NonFiniteModelError(ArtifactError):
    """Weights with NaN or infinite values: evaluating them would record chance accuracy."""


def _load(skeleton: torch.nn.Module, weights: Path) -> torch.nn.Module:
    model = load_weights(copy.deepcopy(skeleton), weights)
    for key, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not all_finite(tensor):
            raise NonFiniteModelError(f"{weights}: tensor '{key}' has NaN or infinite values")
    return model


def _chunks(items: Sequence, size: int) -> list[Sequence]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def ensemble_hits(
    evaluator: Evaluator, skeleton: torch.nn.Module, weights: Sequence[Path], models_per_pass: int
) -> dict[str, torch.Tensor]:
    """Per-image correctness of the logit ensemble of ``weights``, its members read
    ``models_per_pass`` at a time (so they need not fit in memory together) into
    :class:`EnsembleSums`."""
    keys = [str(i) for i in range(len(weights))]
    sums = EnsembleSums(evaluator, {"ensemble": keys}, {key: key for key in keys})
    for group in _chunks(list(zip(keys, weights, strict=True)), models_per_pass):
        evaluator.evaluate({key: _load(skeleton, path) for key, path in group}, on_logits=sums)
    return sums.hits("ensemble", evaluator.names)


def accuracies_of(hits: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """Each dataset's accuracy from its per-image hits, and Avg shifts."""
    return with_avg_shifts({dataset: bits.sum().item() / len(bits) for dataset, bits in hits.items()})


def _row(entry: Model, accuracies: Mapping[str, float], meta: Mapping[str, Any],
         previous: Mapping | None) -> dict:
    """The result row: this evaluation's accuracies plus those of the previous row that
    were measured on the same weights and transform and on datasets not evaluated now."""
    kept: dict[str, Any] = {}
    kept_ids: dict[str, str] = {}
    before = (previous or {}).get("meta") or {}
    if all(before.get(k) == meta[k] for k in ("weights", "eval_transform")):
        for name, identity in (before.get("datasets") or {}).items():
            if name not in accuracies and isinstance((previous or {}).get(name), int | float):
                kept[name], kept_ids[name] = previous[name], identity
    merged = with_avg_shifts({**kept, **{k: v for k, v in accuracies.items() if k != AVG_SHIFTS}})
    info = entry.record
    row: dict[str, Any] = {"name": entry.name, "kind": entry.kind}
    row.update({k: info[k] for k in ROW_FIELDS if info.get(k) is not None})
    row.update(merged)
    members = info.get("members") or info.get("ingredients")
    if members is not None:
        row["num_ingredients"] = len(members)
    published = (info.get("metrics") or {}).get("published")
    if published:  # an import of the authors' release: their numbers for this very checkpoint
        row["published"] = {k: published[k] for k in ACCURACY_KEYS if k in published}
    row["path"] = str(entry.directory)
    row["meta"] = {**meta, "base_model": info.get("base_model"),
                   "datasets": {**kept_ids, **meta["datasets"]}}
    return row


def _up_to_date(previous: Mapping | None, meta: Mapping[str, Any]) -> bool:
    """Whether ``previous`` holds every dataset of this evaluation, measured on the same
    weights, transform and dataset contents."""
    before = (previous or {}).get("meta") or {}
    if any(before.get(k) != meta[k] for k in ("weights", "eval_transform")):
        return False
    done = before.get("datasets") or {}
    return all(done.get(name) == identity and isinstance(previous.get(name), int | float)
               for name, identity in meta["datasets"].items())


def check_data(cfg: DictConfig) -> list[dict]:
    """``check_data=true``: report every dataset of the suite (layout, class folders, image
    counts); ``check_data=verify`` also decodes every image. Fails listing broken ones."""
    from dataclasses import asdict

    from soup_exp.data.checker import check_datasets, raise_on_failure, render_table

    verify = str(cfg.check_data).lower() == "verify"
    reports = check_datasets(cfg.data, list(cfg.eval.datasets), verify=verify,
                             num_threads=max(1, int(cfg.num_workers or 1)))
    data_dir = (cfg.get("paths") or {}).get("data_dir")
    print(render_table(reports, data_dir=str(data_dir) if data_dir else None))
    raise_on_failure(reports)
    return [asdict(r) for r in reports]


def check_evaluate(cfg: DictConfig, overrides: Sequence[str] = (), *, roots: bool = True) -> bool:
    """Known dataset names whose roots exist (``roots=False``: the pipeline's data stage
    makes them first); ``check_data`` runs the whole (read-only) check here, before Hydra
    creates a run directory for it."""
    from soup_exp.data.registry import EVAL_DATASETS

    extra = to_plain(cfg.data.get("datasets")) or {}
    unknown = [n for n in evaluation_suite(EvalSettings.from_config(cfg)) if n not in EVAL_DATASETS and n not in extra]
    if unknown:
        raise ConfigError(f"eval.datasets: unknown {unknown}; known: {', '.join([*EVAL_DATASETS, *extra])} "
                          "(add your own as a file in the datasets config group, see docs/extending.md)")
    if cfg.get("check_data"):
        check_data(cfg)
        return True
    if roots:
        from soup_exp.stages.preflight import require_roots

        require_roots(cfg, evaluation_suite(EvalSettings.from_config(cfg)))
    return False


def plan_evaluate(cfg: DictConfig, overrides: Sequence[str] = ()) -> dict[str, list[str]]:
    """A dry run's lines: the datasets, each model found and whether its row is already there."""
    from soup_exp.stages.preflight import dataset_lines, logger_line

    previous = {row["name"]: row for row in ResultsStore(cfg.results_file).rows()}
    done, todo = [], []
    for entry in select_models(discover_models(cfg), to_plain(cfg.models)):
        row = previous.get(entry.name)
        same = row is not None and (row.get("meta") or {}).get("weights") == fingerprint(entry)
        (done if same else todo).append(entry.name)
    lines = []
    if todo:
        lines.append(f"to evaluate ({len(todo)}): {', '.join(todo)}")
    if done:
        lines.append(f"done, a row for these weights ({len(done)}; skipped unless the datasets changed): "
                     f"{', '.join(done)}")
    return {
        "data": dataset_lines(cfg, evaluation_suite(EvalSettings.from_config(cfg))),
        "evaluate": lines or [f"no models yet in {cfg.zeroshot_dir}, {to_plain(cfg.soup.pool)} or {cfg.soups_dir}"],
        "outputs": [f"results: {cfg.results_file}", logger_line(cfg)],
    }


def drop_rows_of_deleted_models(store: ResultsStore, found: Sequence[Model]) -> list[str]:
    """Remove the rows of models that are gone: no model of that name is found now and the
    row's ``path`` holds no finished run or soup. A moved experiment keeps its rows (its
    models are still found by name); rows without a path (imported numbers) are kept."""
    names = {e.name for e in found}

    def deleted(row: Mapping[str, Any]) -> bool:
        path = Path(row["path"]) if row.get("path") else None
        return (row["name"] not in names and path is not None
                and not is_finished_run(path) and not is_finished_soup(path))

    dropped = store.drop([row["name"] for row in store.rows() if deleted(row)])
    if dropped:
        log.warning("dropped the result rows of %d models no longer in the experiment: %s",
                    len(dropped), ", ".join(dropped))
    return dropped


def run_evaluate(cfg: DictConfig) -> list[dict]:
    """Evaluate the selected models (``cfg.models``) and upsert their rows into
    ``cfg.results_file``; returns the rows written this time."""
    if cfg.get("check_data"):
        return check_data(cfg)

    from soup_exp.data.registry import class_space
    from soup_exp.models import build_classifier
    from soup_exp.tracking.wandb_run import start_run

    eval_cfg = cfg.eval
    store = ResultsStore(cfg.results_file)
    remove_stale_temp_files(store.path.parent, recursive=False)
    found = discover_models(cfg)
    drop_rows_of_deleted_models(store, found)
    previous = {row["name"]: row for row in store.rows()}
    entries = select_models(found, to_plain(cfg.models))
    if not entries:
        log.warning("no models found in %s, %s or %s; nothing to evaluate",
                    cfg.zeroshot_dir, to_plain(cfg.soup.pool), cfg.soups_dir)
        return []

    classes = class_space(cfg.data)
    skeleton, backbone = build_classifier(cfg.model, classes.num_classes, pretrained=False)
    evaluator = build_evaluator(EvalSettings.from_config(cfg), backbone.preprocess_val, classes)
    identities = {name: evaluator.dataset(name).identity() for name in evaluator.names}
    transform = " ".join(evaluator.transform.key.split())
    metas = {e.name: {"weights": fingerprint(e), "eval_transform": transform, "datasets": identities,
                      "classes": classes.identity()} for e in entries}
    todo = [e for e in entries if eval_cfg.force or not _up_to_date(previous.get(e.name), metas[e.name])]
    for entry in entries:
        if entry not in todo:
            log.info("%s: already evaluated for these weights and datasets (eval.force=true re-evaluates)",
                     entry.name)
    broken: dict[str, str] = {}
    rows: list[dict] = []
    if todo:
        with start_run(cfg, "evaluate", name=f"{cfg.name}-evaluate") as run:  # finishes it, failed or not
            def record(entry: Model, accuracies: Mapping[str, float], hits: Mapping[str, torch.Tensor]) -> None:
                meta = metas[entry.name]
                row = _row(entry, accuracies, meta, previous.get(entry.name))
                bits = {dataset: Hits(h.numpy(), meta["datasets"][dataset], meta["weights"])
                        for dataset, h in hits.items()}
                rows.append(store.upsert(row, config=cfg, hits=bits))
                log.info("%s: %s", entry.name, ", ".join(f"{k} {100 * v:.2f}" for k, v in accuracies.items()))
                run.log({f"{entry.name}/{k}": v for k, v in accuracies.items()})

            def skip(entry: Model, err: NonFiniteModelError) -> None:
                broken[entry.name] = str(err)
                log.error("%s is not evaluated (%s); its previous result row, if any, is kept", entry.name, err)

            singles = [e for e in todo if not isinstance(e, Ensemble)]
            ensembles = [e for e in todo if isinstance(e, Ensemble)]
            # ensembles of models evaluated now are scored from those passes' logits
            sums = EnsembleSums(evaluator, {e.name: [str(w.resolve()) for w in e.members] for e in ensembles},
                                {e.name: str(e.weights.resolve()) for e in singles})
            per_image = PerImageHits(evaluator)
            for group in _chunks(singles, eval_cfg.models_per_pass):
                models = {}
                for entry in group:
                    try:
                        models[entry.name] = _load(skeleton, entry.weights)
                    except NonFiniteModelError as err:
                        skip(entry, err)
                results = evaluator.evaluate(models, on_logits=sums, on_hits=per_image) if models else {}
                del models
                for entry in group:
                    if entry.name in results:
                        record(entry, results[entry.name], per_image.pop(entry.name))
            for entry in ensembles:
                try:
                    if sums.complete(entry.name, evaluator.names):
                        hits = sums.hits(entry.name, evaluator.names)
                    else:
                        hits = ensemble_hits(evaluator, skeleton, entry.members, eval_cfg.models_per_pass)
                    record(entry, accuracies_of(hits), hits)
                except NonFiniteModelError as err:
                    skip(entry, err)
            columns = sorted({k for row in rows for k in row if k not in {"meta", "path"}},
                             key=lambda k: (k not in ("name", "kind", "recipe"), k))
            run.log_table("results", columns, [[row.get(c) for c in columns] for row in rows])
            run.summary({"models_evaluated": len(rows), "results_file": str(cfg.results_file)})
        log.info("wrote %d result rows to %s", len(rows), cfg.results_file)
    if broken:
        raise NonFiniteModelError("not evaluated, weights with NaN or infinite values: "
                                  + "; ".join(broken.values()) + ". Remove or retrain these models.")
    return rows


main = stage_entry("evaluate")

if __name__ == "__main__":
    main()
