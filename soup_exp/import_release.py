"""`soup-exp import checkpoints=DIR [results=FILE] [hparams=FILE]`: the authors' release as ingredients.

Every ``model_<i>.pt`` of ``DIR`` becomes ``<ingredients_dir>/model_<i>/`` (see
:mod:`soup_exp.models.release`), with the held-out accuracy (``ImageNet2p``) of the
authors' results file and the hyperparameters of their ``hparam_info.json``. Offline: the
CLIP skeleton that fixes the expected layout is built without pretrained weights. A model
already imported from the same file (size and mtime) is skipped, so an interrupted import
resumes where it stopped.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig
from tqdm.auto import tqdm

from soup_exp.artifacts import ingredient_record, is_finished_run
from soup_exp.errors import ConfigError, OutputConflictError
from soup_exp.stages.entry import stage_entry
from soup_exp.tracking.wandb_run import loggable_config
from soup_exp.utils.io import read_json

log = logging.getLogger(__name__)


def run_import(cfg: DictConfig) -> list[Path]:
    """Import every release file of ``cfg.checkpoints``; returns the ingredient directories."""
    from soup_exp.data.registry import class_space
    from soup_exp.models import build_backbone
    from soup_exp.models.release import (
        NUM_RELEASED,
        WrapperLayout,
        import_checkpoint,
        import_identity,
        published_results,
        release_files,
    )
    from soup_exp.training.sweep import PACKAGED_HPARAMS

    if not cfg.get("checkpoints"):
        raise ConfigError("checkpoints=DIR is required: the folder holding the authors' model_<i>.pt "
                          "files (docs/reproduce.md lists the downloads)")
    files = release_files(cfg.checkpoints)
    results = published_results(_reference(cfg.get("results"), PACKAGED_HPARAMS.parent / "individual_model_results.jsonl",
                                           "results"))
    hparams = read_json(_reference(cfg.get("hparams"), PACKAGED_HPARAMS, "hparams"))
    classes = class_space(cfg.data)
    backbone = build_backbone(cfg.model, pretrained=False)
    if backbone.clip_model is None:
        raise ConfigError(f"model={cfg.model.name} has no CLIP model; the release is ModelWrapper(CLIP ViT-B/32): "
                          "use model=vit_b32")
    layout = WrapperLayout.from_clip(backbone.clip_model)
    if len(files) < NUM_RELEASED:
        log.warning("%s holds %d of the %d released checkpoints; importing those", cfg.checkpoints,
                    len(files), NUM_RELEASED)
    out_root = Path(cfg.ingredients_dir)
    config = loggable_config(cfg)
    done = []
    for name, path in tqdm(files, desc="importing checkpoints", unit="model", disable=not cfg.progress):
        out_dir = out_root / name
        identity = import_identity(path, name, backbone.model_id, classes)
        if _already_imported(out_dir, identity):
            log.info("%s: already imported from %s; skipping", name, path)
        else:
            if name not in results:
                log.warning("%s is not in the results file: no held-out accuracy recorded "
                            "(the soup stage evaluates it)", name)
            import_checkpoint(path, out_dir, name=name, layout=layout, classes=classes,
                              base_model=backbone.model_id, published=results.get(name),
                              hparams_entry=hparams.get(name), config=config)
        done.append(out_dir)
    log.info("imported %d checkpoints from %s as ingredients in %s", len(done), cfg.checkpoints, out_root)
    return done


def _reference(value: Any, packaged: Path, key: str) -> Path:
    if not value:
        return packaged
    path = Path(str(value)).expanduser()
    if not path.is_file():
        raise ConfigError(f"{key}={path} does not exist (leave {key} unset to use the copy shipped with soup-exp)")
    return path


def _already_imported(out_dir: Path, identity: dict[str, Any]) -> bool:
    """True when ``out_dir`` holds this very import; an import of another file version is
    redone, anything else in the way (a fine-tune of the same name) is an error."""
    from soup_exp.training.ingredient import existing_ingredient

    try:
        return existing_ingredient(out_dir, identity) is not None
    except OutputConflictError:
        recorded = ingredient_record(out_dir).get("identity", {}) if is_finished_run(out_dir) else {}
        if recorded.get("import") != identity["import"]:
            raise
        log.info("%s: the release file changed since it was imported; importing it again", out_dir.name)
        return False


main = stage_entry("import")

if __name__ == "__main__":
    main()
