"""`soup-exp finetune`: one ingredient, from config to ``model.safetensors`` + ``ingredient.json``.

`-m sweep=paper_vitb32 'sweep.index=range(71)'` runs the paper's sweep, one job per member.
The training machinery lives in :mod:`soup_exp.training`; this module is the stage.
Modes (``train.mode``), a registry of builders that each return the trained classifier:

- ``zeroshot``: the CLIP zero-shot classifier (open_clip's builder, prompt templates);
- ``lp``: a linear probe on cached frozen features (the paper's model_0, "LP init");
- ``finetune``: end to end, starting from ``train.init_from`` (an ingredient directory,
  LP-FT) or from the pretrained tower with a ``train.head_init`` head (zeroshot | lp).

The sweep draw is applied and every hyperparameter validated before anything is loaded.
A finished ingredient is final: running the same job again is a no-op.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from soup_exp.artifacts import (
    INGREDIENT_FILE,
    WEIGHTS_FILE,
    ingredient_record,
    is_finished_run,
    load_weights,
)
from soup_exp.data.classes import ClassSpace
from soup_exp.errors import ConfigError, SoupExpError
from soup_exp.stages.entry import stage_entry
from soup_exp.stages.experiment import check_names
from soup_exp.training import ingredient as store
from soup_exp.training.checkpoint import checkpoint_path
from soup_exp.training.distributed import DistContext, setup_distributed, teardown_distributed
from soup_exp.training.optim import describe_warmup, linear_probe_steps, planned_warmup
from soup_exp.training.settings import TrainSettings, train_settings
from soup_exp.training.sweep import SweepDraw, apply_sweep
from soup_exp.utils.config import loggable_config, to_plain
from soup_exp.utils.hashing import content_sha256, stable_hash
from soup_exp.utils.io import remove_stale_temp_files
from soup_exp.utils.runtime import code_version, threads_beside_loader
from soup_exp.vocabulary import HELD_OUT

log = logging.getLogger(__name__)


@dataclass
class Job:
    """Everything a mode builder needs, resolved once."""

    cfg: DictConfig
    settings: TrainSettings
    draw: SweepDraw
    identity: dict[str, Any]
    ctx: DistContext
    classes: ClassSpace
    name: str
    older_fingerprints: list[str] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    run: Any = None


@dataclass(frozen=True)
class RunSpec:
    """One run resolved from its config, before anything is loaded: its sweep draw, its
    validated settings, its classes and its identity."""

    cfg: DictConfig
    draw: SweepDraw
    settings: TrainSettings
    classes: ClassSpace
    identity: dict[str, Any]

    @property
    def out_dir(self) -> Path:
        return Path(self.settings.output_dir)

    @property
    def older_fingerprints(self) -> list[str]:
        """The fingerprint an older soup-exp gave this run, when it differs (paths, not content)."""
        older = store.fingerprint(path_identity(self.cfg, self.settings, self.draw, self.classes))
        return [older] if older != store.fingerprint(self.identity) else []

    def finished(self) -> Path | None:
        """``out_dir`` when it holds this run's finished ingredient (an error when it holds another's)."""
        return store.existing_ingredient(self.out_dir, self.identity,
                                         lambda record, name: written_by_path(self, record, name))


def resolve_run(cfg: DictConfig) -> RunSpec:
    """Apply the sweep draw to a copy of ``cfg`` and validate every hyperparameter."""
    from soup_exp.data.registry import class_space

    cfg = copy.deepcopy(cfg)
    draw = apply_sweep(cfg)
    check_names(cfg)
    settings = train_settings(cfg.train)
    classes = class_space(cfg.data)
    return RunSpec(cfg, draw, settings, classes, run_identity(cfg, settings, draw, classes))


def job_output(cfg: DictConfig) -> Path:
    """The ingredient directory this run writes (after the sweep draw names it)."""
    cfg = copy.deepcopy(cfg)
    apply_sweep(cfg)
    return Path(str(cfg.train.output_dir)).resolve()


def finished_output(cfg: DictConfig) -> Path | None:
    """The ingredient directory when this configuration's ingredient is already there."""
    spec = resolve_run(cfg)
    return spec.out_dir if spec.finished() is not None else None


def check_finetune(cfg: DictConfig, overrides: Sequence[str] = ()) -> None:
    """Everything that can fail before training, checked before anything is created."""
    from soup_exp.stages.preflight import require_roots

    spec = resolve_run(cfg)
    if spec.finished() is None:
        check_init(spec)
        require_roots(cfg, [HELD_OUT])  # held-out (and training set): ImageNet train


def plan_finetune(cfg: DictConfig, overrides: Sequence[str] = ()) -> dict[str, list[str]]:
    """A dry run's lines: the run, its datasets and outputs, and whether it is already done."""
    from soup_exp.stages.preflight import classes_line, dataset_lines, logger_line

    spec = resolve_run(cfg)
    datasets = [HELD_OUT] + (["train"] if spec.settings.mode != "zeroshot" else [])
    return {
        "data": [classes_line(cfg), *dataset_lines(cfg, datasets)],
        "finetune": [describe_run(spec), *sweep_wins(spec.draw, overrides)],
        "outputs": [f"zero-shot model: {spec.out_dir}" if spec.settings.mode == "zeroshot"
                    else f"ingredients: {spec.out_dir.parent}", logger_line(cfg),
                    f"Hydra logs: {Path(str(cfg.out_dir)) / 'hydra'}"],
    }


def sweep_wins(draw: SweepDraw, overrides: Sequence[str]) -> list[str]:
    """A note for each ``train.X=...`` on the command line that the sweep member's own
    value replaces: the sweep wins, and saying so beats a silently ignored setting."""
    notes = []
    for override in overrides:
        key, sep, value = override.partition("=")
        name = key.lstrip("+~").removeprefix("train.")
        if sep and key.lstrip("+~").startswith("train.") and name in draw.train:
            notes.append(f"{key.lstrip('+~')}={value} is replaced by sweep {draw.kind} {draw.name}'s "
                         f"{name}={_short(draw.train[name])}: the sweep's value wins (remove {name} from the "
                         f"sweep, ~sweep.space.{name}, to use yours)")
    return notes


def command_line_overrides() -> list[str]:
    """This job's overrides as Hydra parsed them (empty outside a Hydra job)."""
    from hydra.core.hydra_config import HydraConfig

    try:
        return list(HydraConfig.get().overrides.task)
    except ValueError:
        return []


def describe_run(spec: RunSpec) -> str:
    """``name [status] mode (start): the hyperparameters that matter for the mode``."""
    s = spec.settings
    if spec.finished() is not None:
        status = "done, skipped"
    elif checkpoint_path(spec.out_dir).is_file():
        status = "resumes from its checkpoint"
    else:
        status = "to run"
    if s.mode == "finetune":
        start = f"from {s.init_from}" if s.init_from else f"from the pretrained model, {s.head_init} head"
        keys = ["lr", "weight_decay", "epochs", "max_steps", "batch_size", "warmup_steps",
                "label_smoothing", "mix", "aug"]
        values = {k: getattr(s, k) for k in keys if k != "max_steps" or s.max_steps}
        values["warmup_steps"] = planned_warmup(s, planned_steps(spec))
    elif s.mode == "lp":
        start, values = "on frozen features", {f"lp.{k}": v for k, v in asdict(s.lp).items()}
        images = training_images(spec.cfg.data, spec.classes) if s.lp.warmup_steps else None
        if images is not None:
            steps = linear_probe_steps(images, s.lp.epochs, s.lp.batch_size)
            values["lp.warmup_steps"] = describe_warmup(s.lp.warmup_steps, steps, "train.lp.warmup_steps")
    else:
        start, values = "prompt-ensemble head", {}
    drawn = f"; sweep {spec.draw.kind} {spec.draw.name}" if spec.draw.kind != "none" else ""
    described = {"finetune": "warmup_steps", "lp": "lp.warmup_steps"}.get(s.mode)
    settings = ", ".join(v if k == described and isinstance(v, str) else f"{k}={_short(v)}"
                         for k, v in values.items())
    return f"{spec.out_dir.name} [{status}] {s.mode} {start}{drawn}" + (f": {settings}" if settings else "")


def planned_steps(spec: RunSpec) -> int | None:
    """The optimiser steps ``fit`` will take, from the training set's size as it lies now
    (None when it cannot be listed yet, e.g. before the data stage makes it)."""
    from soup_exp.training.optim import Schedule

    images = training_images(spec.cfg.data, spec.classes)
    if images is None:
        return None
    try:
        return Schedule.plan(spec.settings, images, int(os.environ.get("WORLD_SIZE", "1"))).total_steps
    except ConfigError:  # a batch the run refuses: the run says so, the plan has no length
        return None


def training_images(data_cfg: DictConfig, classes: ClassSpace) -> int | None:
    """How many images ``build_train_samples`` will give (ImageNet train in the class space
    minus the held-out split), counted without saving the split: a plan writes nothing.
    Listed once per process, as a pipeline plans every sweep member on the same set."""
    from soup_exp.data.heldout import heldout_split

    root = (data_cfg.get("roots") or {}).get("ImageNet")
    heldout = {**to_plain(data_cfg.heldout), "split_dir": None}
    key = (str(root), tuple(classes.indices), stable_hash(heldout))
    if key not in _TRAINING_IMAGES:
        count = None
        if root and Path(str(root)).is_dir():
            try:
                listing, positions = heldout_split({"roots": {"ImageNet": str(root)}, "heldout": heldout}, classes)
                in_space = sum(classes.local_index(int(label)) is not None for label in listing.imagenet_labels)
                count = in_space - int(positions.size)
            except (OSError, SoupExpError):  # incomplete or unreadable: the stage's checks say why
                count = None
        _TRAINING_IMAGES[key] = count
    return _TRAINING_IMAGES[key]


_TRAINING_IMAGES: dict[tuple[str, tuple[int, ...], str], int | None] = {}


def _short(value: Any) -> str:
    return "none" if value is None else f"{value:.3g}" if isinstance(value, float) else str(value)


def check_init(spec: RunSpec) -> dict[str, Any] | None:
    """The ``ingredient.json`` of ``train.init_from`` for an LP-FT run, checked against this run."""
    s = spec.settings
    if s.mode != "finetune" or not s.init_from:
        return None
    return init_ingredient_info(Path(s.init_from), spec.cfg.model, spec.classes)


def run_finetune(cfg: DictConfig) -> Path:
    """Train (or find) the ingredient described by ``cfg``; returns its directory."""
    spec = resolve_run(cfg)
    cfg, settings, draw, classes, identity, out_dir = (
        spec.cfg, spec.settings, spec.draw, spec.classes, spec.identity, spec.out_dir)
    for note in sweep_wins(draw, command_line_overrides()):
        log.warning("%s", note)
    remove_stale_temp_files(out_dir)
    if spec.finished() is not None:
        log.info("%s is already a finished ingredient of this configuration; nothing to do", out_dir)
        return out_dir
    check_init(spec)  # before the directory and the W&B run exist

    ctx = setup_distributed(str(cfg.device))
    try:
        if ctx.is_main:
            store.claim(out_dir, identity)
        ctx.barrier()
        job = Job(cfg, settings, draw, identity, ctx, classes, out_dir.name,
                  older_fingerprints=spec.older_fingerprints)
        job.run = _start_tracking(job)
        torch.manual_seed(int(cfg.seed))  # randomly initialised towers/heads are reproducible
        try:
            model, backbone = MODES[settings.mode](job)
            if ctx.is_main:
                held_out = held_out_accuracy(job, model, backbone.preprocess_val)
                store.write_ingredient(out_dir, model, ingredient_info(job, backbone.model_id, held_out),
                                       identity, keep_checkpoints=settings.keep_checkpoints)
                if job.run is not None:
                    job.run.summary({"held_out_accuracy": held_out["held_out_accuracy"],
                                     **_flat_metrics(job.metrics)})
            ctx.barrier()
        finally:
            if job.run is not None:
                job.run.finish()
    finally:
        teardown_distributed(ctx)
    return out_dir


def run_identity(cfg: DictConfig, settings: TrainSettings, draw: SweepDraw,
                 classes: ClassSpace) -> dict[str, Any]:
    """What makes two runs the same ingredient (devices, workers and paths excluded). Files
    it starts from (the init ingredient, a held-out split file) count by their content, not
    their path, so a moved or copied experiment keeps its ingredients and checkpoints."""
    identity = path_identity(cfg, settings, draw, classes)
    if settings.init_from:
        identity["hparams"]["init_from"] = {"weights_sha256": content_sha256(Path(settings.init_from) / WEIGHTS_FILE)}
    if identity["heldout"]["index_file"]:
        identity["heldout"]["index_file"] = {"sha256": content_sha256(identity["heldout"]["index_file"])}
    return identity


def path_identity(cfg: DictConfig, settings: TrainSettings, draw: SweepDraw,
                  classes: ClassSpace) -> dict[str, Any]:
    """The identity as soup-exp wrote it up to issue 25: ``train.init_from`` and
    ``data.heldout.index_file`` by path. Records in this form are still accepted
    (:func:`written_by_path`)."""
    model = to_plain(cfg.model)
    from soup_exp.utils.model_id import model_id_for

    heldout = to_plain(cfg.data.heldout)
    return {
        "model": model_id_for(model),
        "model_kwargs": model.get("kwargs"),
        "classes": stable_hash(list(classes.indices)),
        "heldout": {k: heldout[k] for k in ("per_class", "seed", "index_file")}
        | ({"index_file_lists": heldout["index_file_lists"]} if heldout["index_file"] else {}),
        "hparams": settings.hparams(),
        "sweep": draw.record(),
        "seed": int(cfg.seed),
        "precision": str(cfg.precision),
    }


def written_by_path(spec: RunSpec, record: Mapping[str, Any], record_file: str) -> bool:
    """Whether ``record`` is this run's as soup-exp identified runs up to issue 25, by
    paths (:func:`path_identity`). So it is where it was made; moved or copied, a finished
    ingredient is when its ``train.init_from`` lies at the same place inside the experiment
    (its recorded ``config.out_dir`` then, ``out_dir`` now) and is the same init (the name
    and held-out accuracy it recorded of it). A moved run.json has no config to tell."""
    older = path_identity(spec.cfg, spec.settings, spec.draw, spec.classes)
    if record.get("fingerprint") == store.fingerprint(older):
        return True
    then = _field(_field(record, "identity"), "hparams").get("init_from")
    if record_file != INGREDIENT_FILE or not spec.settings.init_from or not isinstance(then, str):
        return False
    place = _inside(spec.settings.init_from, str(spec.cfg.out_dir))
    if place is None or place != _inside(then, str(_field(record, "config").get("out_dir") or "")):
        return False
    older["hparams"]["init_from"] = then
    init_dir, init_then = Path(spec.settings.init_from), _field(_field(record, "metrics"), "init")
    if record.get("fingerprint") != store.fingerprint(older) or not init_then or not is_finished_run(init_dir):
        return False
    init_now = ingredient_record(init_dir)
    return all(init_then.get(k) == init_now.get(k) for k in ("name", "held_out_accuracy"))


def _field(record: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = record.get(key)
    return value if isinstance(value, Mapping) else {}


def _inside(path: str, root: str) -> Path | None:
    """``path`` relative to ``root`` when it lies inside it (compared as written: the old
    location may be gone)."""
    try:
        return Path(os.path.abspath(path)).relative_to(os.path.abspath(root)) if root else None
    except ValueError:
        return None


# ---- modes ------------------------------------------------------------------------------

def _zeroshot(job: Job) -> tuple[nn.Module, Any]:
    from soup_exp.models import ImageClassifier, build_backbone

    backbone = build_backbone(job.cfg.model, pretrained=True)
    return ImageClassifier(backbone.image_encoder, zeroshot_head_for(backbone, job)), backbone


def _linear_probe(job: Job) -> tuple[nn.Module, Any]:
    from soup_exp.models import ImageClassifier, build_backbone

    backbone = build_backbone(job.cfg.model, pretrained=True)
    head = _nonzero_rank_head(backbone, job) if not job.ctx.is_main else lp_head(backbone, job)
    return ImageClassifier(backbone.image_encoder, head), backbone


def _finetune(job: Job) -> tuple[nn.Module, Any]:
    from soup_exp.data.registry import build_train_samples
    from soup_exp.training.augment import train_transform  # imports timm: not at module level
    from soup_exp.training.loop import fit

    s = job.settings
    model, backbone = initial_model(job)
    samples = build_train_samples(job.cfg.data, job.classes)
    from soup_exp.training.data import TrainImages

    dataset = TrainImages(samples, train_transform(backbone, s.base_transform, s.aug))
    evaluate = _periodic_evaluator(job, backbone) if s.eval_every_steps and job.ctx.is_main else None
    workers = int(job.cfg.num_workers)
    with threads_beside_loader(job.ctx.device, workers):
        result = fit(
            model, dataset, s, ctx=job.ctx, num_classes=job.classes.num_classes,
            fingerprint=store.fingerprint(job.identity), older_fingerprints=job.older_fingerprints, seed=int(job.cfg.seed),
            precision=str(job.cfg.precision), num_workers=workers,
            evaluate=evaluate, run=job.run, progress=bool(job.cfg.progress),
        )
    job.metrics["train"] = {
        "steps": result.steps, "resumed_from_step": result.resumed_from, "final_loss": result.final_loss,
        "seconds": round(result.seconds, 1), "train_images": len(samples),
        "world_size": job.ctx.world_size, "held_out_curve": result.held_out,
    }
    return model.cpu(), backbone


MODES: dict[str, Callable[[Job], tuple[nn.Module, Any]]] = {
    "zeroshot": _zeroshot,
    "lp": _linear_probe,
    "finetune": _finetune,
}


# ---- initialisation -----------------------------------------------------------------------

def initial_model(job: Job) -> tuple[nn.Module, Any]:
    """The classifier a fine-tune starts from: an ingredient (LP-FT) or tower + new head."""
    from soup_exp.models import ImageClassifier, build_backbone

    s = job.settings
    if s.init_from:
        info = init_ingredient_info(Path(s.init_from), job.cfg.model, job.classes)
        backbone = build_backbone(job.cfg.model, pretrained=False)
        head = nn.Linear(backbone.feature_dim, job.classes.num_classes)
        model = load_weights(ImageClassifier(backbone.image_encoder, head), s.init_from)
        log.info("fine-tuning from ingredient %s (%s, held-out accuracy %s): %s", info.get("name"),
                 info.get("kind"), store.percent_text(info.get("held_out_accuracy")), s.init_from)
        job.metrics["init"] = {"from": str(s.init_from), "name": info.get("name"),
                               "held_out_accuracy": info.get("held_out_accuracy")}
        return model, backbone
    backbone = build_backbone(job.cfg.model, pretrained=True)
    if not job.ctx.is_main and s.head_init == "lp":
        head = _nonzero_rank_head(backbone, job)
    else:
        head = HEAD_INITS[s.head_init](backbone, job)
    job.metrics["init"] = {"head": s.head_init}
    return ImageClassifier(backbone.image_encoder, head), backbone


def init_ingredient_info(path: Path, model_cfg: DictConfig, classes: ClassSpace) -> dict[str, Any]:
    if not is_finished_run(path):
        raise SoupExpError(
            f"train.init_from={path} is not a finished ingredient (no {INGREDIENT_FILE}). "
            "Create the LP init first: `soup-exp finetune sweep=lp_init`, or set "
            "train.init_from=null to start from the pretrained model with train.head_init."
        )
    info = ingredient_record(path)
    from soup_exp.utils.model_id import model_id_for

    expected = model_id_for(to_plain(model_cfg))
    if info.get("base_model") != expected:
        raise SoupExpError(f"train.init_from={path} was trained from {info.get('base_model')}, "
                           f"but this run's model is {expected}")
    if list(info.get("classes") or []) != list(classes.indices):
        raise SoupExpError(f"train.init_from={path} predicts other classes than data.classes of this run")
    return info


def zeroshot_head_for(backbone: Any, job: Job) -> nn.Linear:
    from soup_exp.models import zeroshot_head

    try:
        show = None if job.cfg.progress else False  # None: a bar for > 100 classes
        return zeroshot_head(backbone, job.classes.classnames, device=job.ctx.device, progress=show)
    except ValueError as err:
        raise ConfigError(str(err)) from err


def lp_head(backbone: Any, job: Job) -> nn.Linear:
    """The paper's LP init: logistic regression on frozen, cached features of the train split,
    started from the zero-shot head when the backbone has a text tower."""
    from soup_exp.data.registry import build_train_samples
    from soup_exp.training.lp import extract_features, train_linear_probe

    lp = job.settings.lp
    samples = build_train_samples(job.cfg.data, job.classes)
    cache_dir = Path(str(job.cfg.paths.cache_dir)) / "features"
    cache_file = cache_dir / f"{stable_hash([backbone.model_id, job.classes.indices])}.safetensors"
    features, labels = extract_features(
        backbone.image_encoder, samples, backbone.preprocess_val, batch_size=lp.batch_size,
        device=job.ctx.device, cache_file=cache_file, num_workers=int(job.cfg.num_workers),
        precision=str(job.cfg.precision), progress=bool(job.cfg.progress),
    )
    init = zeroshot_head_for(backbone, job) if backbone.clip_model is not None else None
    head = train_linear_probe(features, labels, job.classes.num_classes, init=init, epochs=lp.epochs,
                              lr=lp.lr, weight_decay=lp.weight_decay, batch_size=lp.batch_size,
                              warmup_steps=lp.warmup_steps, seed=int(job.cfg.seed),
                              progress=bool(job.cfg.progress))
    job.metrics["lp"] = {"train_images": len(samples), "feature_cache": str(cache_file)}
    return head


def _nonzero_rank_head(backbone: Any, job: Job) -> nn.Linear:
    """Ranks > 0 skip the LP: DDP broadcasts rank 0's weights when it wraps the model."""
    return nn.Linear(backbone.feature_dim, job.classes.num_classes)


HEAD_INITS: dict[str, Callable[[Any, Job], nn.Linear]] = {"zeroshot": zeroshot_head_for, "lp": lp_head}


# ---- evaluation, records, tracking ------------------------------------------------------------

def _held_out_evaluator(job: Job, preprocess: Any):
    from soup_exp.evaluation.evaluator import build_evaluator
    from soup_exp.evaluation.settings import EvalSettings

    return build_evaluator(EvalSettings.from_config(job.cfg), preprocess, job.classes, names=[HELD_OUT])


def held_out_accuracy(job: Job, model: nn.Module, preprocess: Any) -> dict[str, Any]:
    """The held-out accuracy with what it was measured on: the numerics (``fp32`` or
    ``bf16``) and the identity of data, split and transform (the soup stage reuses the score
    only when its own judge matches)."""
    evaluator = _held_out_evaluator(job, preprocess)
    accuracy = float(evaluator.evaluate({job.name: model})[job.name][HELD_OUT])
    model.cpu()
    return {"held_out_accuracy": accuracy, "held_out_precision": evaluator.numerics,
            "held_out_data": evaluator.scores_identity(HELD_OUT)}


def _periodic_evaluator(job: Job, backbone: Any) -> Callable[[nn.Module], float]:
    evaluator = _held_out_evaluator(job, backbone.preprocess_val)

    def evaluate(model: nn.Module) -> float:
        return float(evaluator.evaluate({job.name: model})[job.name][HELD_OUT])

    return evaluate


def ingredient_info(job: Job, base_model: str, held_out: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": job.name,
        "kind": job.settings.mode,
        "base_model": base_model,
        "classes": list(job.classes.indices),
        "hparams": job.settings.hparams(),
        "sweep": job.draw.record(),
        **held_out,
        "metrics": {HELD_OUT: held_out["held_out_accuracy"], **job.metrics},
        "config": loggable_config(job.cfg),
        "code_version": code_version(),
    }


def _start_tracking(job: Job) -> Any:
    if not job.ctx.is_main:
        return None
    from soup_exp.tracking.wandb_run import start_run

    return start_run(job.cfg, "finetune", job.name, group=job.cfg.logger.get("group"))


def _flat_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    train = metrics.get("train") or {}
    return {f"train/{k}": v for k, v in train.items() if isinstance(v, int | float)}


main = stage_entry("finetune")

if __name__ == "__main__":
    main()
