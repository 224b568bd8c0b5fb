"""What every stage does around its work: check the settings and names, claim the output
directory, turn user errors into one clear message, and log where things went."""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import torch
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict

from soup_exp.cluster.signals import StopRequested
from soup_exp.errors import ConfigError, OutputConflictError, SoupExpError
from soup_exp.utils.checks import check_stage_settings
from soup_exp.utils.config import (
    apply_secret_overrides,
    config_get,
    is_secret_key,
    known_secret_values,
    scrub_secrets,
    stash_secrets,
    take_secrets_out,
    to_plain,
)
from soup_exp.utils.io import (
    STORAGE_ERRNOS,
    atomic_write_json,
    atomic_write_text,
    remove_stale_temp_files,
)
from soup_exp.utils.runtime import require_device

log = logging.getLogger(__name__)

MARKER = "experiment.json"
NAME_KEYS = ("name", "sweep.name")  # config values that become folder names
NAME_MAX_BYTES = 255  # NAME_MAX of ext4, XFS, Lustre, GPFS and NFS alike
NAME_PATTERN_CHARS = "*?["  # make ``name`` a pattern over experiments, which only the report reads


def experiment_identity(cfg: DictConfig) -> dict[str, Any]:
    """What makes two runs 'the same experiment': its name, data classes and model (with
    its pretrained start: ``model_id``, e.g. ``open_clip:ViT-B-32:openai``)."""
    from soup_exp.utils.model_id import model_id_for

    model = to_plain(cfg.get("model")) or {}
    data = cfg.get("data") or {}
    return {
        "name": cfg.name,
        "model": {k: model.get(k) for k in ("source", "name")},
        "model_id": model_id_for(model) if model.get("name") else None,
        "classes": to_plain(data.get("classes")),
    }


def check_output_dir(cfg: DictConfig) -> dict[str, Any] | None:
    """The marker of ``cfg.out_dir`` if the directory is already this experiment's (None
    when it is new and can be created); raise if it is another experiment's.

    Two experiments writing into one directory would mix their ingredients into each
    other's soups, so a mismatch stops the run before anything is written. A marker from
    an older version that lacks a key is accepted (and completed when the run claims it).
    """
    from soup_exp.artifacts import read_record

    out_dir = Path(cfg.out_dir)
    marker = out_dir / MARKER
    if not marker.exists():
        check_writable(out_dir)
        return None
    check_writable(out_dir)  # an existing one may be read-only, or another user's
    existing, identity = read_record(marker), experiment_identity(cfg)
    differs = {k for k in identity if k in existing and existing[k] != identity[k]}
    if differs:
        raise OutputConflictError(
            f"output directory {out_dir} holds a different experiment ({', '.join(sorted(differs))} "
            f"differ):\n  there: {existing}\n  this run: {identity}\n"
            "Choose another experiment name (name=...) or output root "
            "(paths.output_dir=... or SOUP_OUTPUT_DIR), or delete that directory."
        )
    return existing


def claim_output_dir(cfg: DictConfig) -> Path:
    """Create ``cfg.out_dir`` or check that it already belongs to this experiment."""
    out_dir = Path(cfg.out_dir)
    existing = check_output_dir(cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(out_dir, recursive=False)  # a killed write of the marker, pipeline.json, ...
    identity = experiment_identity(cfg)
    if existing is None or set(identity) - set(existing):
        atomic_write_json(out_dir / MARKER, {**(existing or {}), **identity})
    return out_dir


def is_name_pattern(name: Any) -> bool:
    """``demo-seed*``: a glob over experiment names (``soup-exp report`` across experiments)."""
    return name is not None and any(ch in str(name) for ch in NAME_PATTERN_CHARS)


def check_names(cfg: Any) -> None:
    """``name`` and ``sweep.name`` become folder names: single path components only. Only
    the report, which writes into no experiment, takes a pattern for ``name``: a folder named
    ``demo-seed*`` would be matched by the pattern meant to find the seeds."""
    from soup_exp.artifacts import check_name

    name, stage = config_get(cfg, "name"), config_get(cfg, "stage")
    if is_name_pattern(name) and stage != "report":
        raise ConfigError(f"name={name!r}: {' '.join(NAME_PATTERN_CHARS)} make a pattern over experiments, "
                          f"which only `soup-exp report` reads (name='demo-seed*'); choose a name without them "
                          f"for {stage or 'this stage'}")
    for key in NAME_KEYS:
        value = config_get(cfg, key)
        if value is not None:
            check_name(value, key)
            if len(str(value).encode()) > NAME_MAX_BYTES:
                raise ConfigError(f"{key} is {len(str(value).encode())} bytes long: names become folder names, "
                                  f"which file systems limit to {NAME_MAX_BYTES} bytes; choose a shorter {key}")


def check_config(cfg: Any) -> None:
    """Everything about a stage config that can be checked before the stage starts."""
    check_names(cfg)
    check_stage_settings(cfg)


def user_error(err: BaseException | None) -> SoupExpError | None:
    """``err`` if it is a user error, or the user error that Hydra or OmegaConf wrapped
    (a resolver's or a ``_target_``'s); None for anything else, which is a bug."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    for _ in range(10):
        if isinstance(err, SoupExpError):
            return err
        if not isinstance(err, HydraException | OmegaConfBaseException):
            return None
        err = err.__cause__ or err.__context__
    return None


def exit_with_error(stage: str, message: Any) -> NoReturn:
    """The one line a user error prints, then exit status 2."""
    log.debug("stage failed", exc_info=True)
    print(f"soup-exp {stage}: error: {message}", file=sys.stderr)
    sys.exit(2)


def run_stage(cfg: DictConfig, stage: Callable[[DictConfig], Any], claim: bool = True) -> Any:
    """Run one stage; user errors become a single message and exit status 2.

    ``claim=False`` for stages that only read an experiment's results (report). Running
    out of space or permission anywhere is a user error too: the message names the file.
    Secret overrides (handed over in the environment) are set on ``cfg`` here.
    """
    name = cfg.stage
    try:
        cfg = apply_secret_overrides(cfg)
        scrub_hydra_files(cfg)
        check_config(cfg)
        require_device(str(cfg.device))
        if cfg.get("cpu_threads"):
            torch.set_num_threads(int(cfg.cpu_threads))
        if claim:
            claim_output_dir(cfg)
        return stage(cfg)
    except StopRequested as stop:
        print(f"soup-exp {name}: stopped by {signal.Signals(stop.signum).name} at {stop.where} "
              f"(checkpoint {stop.checkpoint}); rerun the same command to resume", file=sys.stderr)
        sys.exit(stop.exit_code)
    except Exception as err:
        mine = user_error(err)
        log.debug("stage failed", exc_info=True)
        if mine is not None:
            exit_with_error(name, mine)
        if isinstance(err, OSError) and err.errno in STORAGE_ERRNOS:
            exit_with_error(name, f"{err.strerror or err}: {err.filename or ''}".rstrip(": "))
        raise


# ---- before Hydra starts the job ----------------------------------------------------------


def check_writable(directory: Path) -> None:
    """``directory``, or the ancestor it would be created in, accepts new files."""
    from soup_exp.utils.io import WriteError

    existing = directory
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not os.access(existing, os.W_OK | os.X_OK):
        raise WriteError(f"output directory {directory} cannot be written ({existing} is read-only for this "
                         f"user{_owner_note(existing)}); choose another output root (paths.output_dir=... "
                         "or SOUP_OUTPUT_DIR)")


def _owner_note(path: Path) -> str:
    """``", it belongs to <user>"`` when another user owns ``path``."""
    import pwd

    try:
        owner = path.stat().st_uid
    except OSError:
        return ""
    if owner == os.geteuid():
        return ""
    try:
        return f", it belongs to {pwd.getpwuid(owner).pw_name}"
    except KeyError:
        return f", it belongs to user id {owner}"



def scrub_hydra_files(cfg: Any = None) -> None:
    """Drop secret-named entries, and redact known secret values (those of ``cfg``, the
    handed-over overrides, ``WANDB_API_KEY``), in the files Hydra saved before the job
    started (``.hydra/config.yaml``, ``hydra.yaml``, a sweep's ``multirun.yaml``). The
    :class:`KeepSecretsOut` callback keeps them out of the run's own copies; this catches a
    sweep job's, which Hydra composes from the config files again."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    try:
        hydra_cfg = HydraConfig.get()
    except ValueError:
        return
    values = known_secret_values(cfg) if cfg is not None else known_secret_values()
    run_dir, subdir = OmegaConf.select(hydra_cfg, "runtime.output_dir"), hydra_cfg.get("output_subdir")
    sweep_dir = OmegaConf.select(hydra_cfg, "sweep.dir") if hydra_cfg.get("mode") == RunMode.MULTIRUN else None
    saved_dir = Path(run_dir) / str(subdir) if run_dir and subdir else None
    files = [saved_dir / "config.yaml" if saved_dir else None, saved_dir / "hydra.yaml" if saved_dir else None,
             Path(sweep_dir) / "multirun.yaml" if sweep_dir else None]
    for path in files:
        if path is None or not path.is_file():
            continue
        saved = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
        if not isinstance(saved, dict):
            continue
        clean = scrub_secrets(saved, values)
        if clean != saved:
            atomic_write_text(path, OmegaConf.to_yaml(OmegaConf.create(clean)))


class KeepSecretsOut(Callback):
    """Takes secrets out of the composed config before Hydra saves it (``config.yaml``,
    ``multirun.yaml``) and submitit pickles it, and out of a job's result; the stage gets
    them back from the environment (:func:`soup_exp.utils.config.apply_secret_overrides`).

    A secret-named ``hydra.job.env_set`` entry is set in this process's environment instead,
    which the job inherits."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        _take_secrets_out(config)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _take_secrets_out(config)

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        values = known_secret_values(config)
        for saved in (getattr(job_return, "cfg", None), getattr(job_return, "hydra_cfg", None)):
            if OmegaConf.is_config(saved):
                _env_set_secrets_out(saved)
                take_secrets_out(saved, values)


def _take_secrets_out(config: DictConfig) -> None:
    values = known_secret_values(config)
    for name, value in _env_set_secrets_out(config).items():
        os.environ[name] = value
    taken = take_secrets_out(config, values)
    if taken:
        stash_secrets(taken)


def _env_set_secrets_out(config: DictConfig) -> dict[str, str]:
    """Remove the secret-named ``hydra.job.env_set`` entries of ``config``; return them."""
    from omegaconf import read_write

    env_set = OmegaConf.select(config, "hydra.job.env_set")
    if env_set is None:
        return {}
    secret = {str(k): str(env_set[k]) for k in list(env_set.keys()) if is_secret_key(k)}
    if secret:
        with read_write(env_set), open_dict(env_set):
            for name in secret:
                del env_set[name]
    return secret
