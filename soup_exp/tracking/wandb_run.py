"""A W&B run that never kills the experiment.

Tracking is a copy of what the stages already write locally (ingredient.json, soup.json,
results.jsonl), so any W&B failure (no network, bad key, init timeout, a crashed
service) is downgraded to one warning and the run continues as a no-op. Offline mode is
the default because compute nodes often have no network; `wandb sync <run dir>` uploads
later. The API key is read by wandb from ``WANDB_API_KEY`` only and never from configs;
the run's config is :func:`soup_exp.utils.config.loggable_config` (secrets dropped).
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from soup_exp.utils.config import (
    REDACTED,
    config_get,
    is_secret_key,
    loggable_config,
    scrub_secrets,
    to_plain,
)

log = logging.getLogger(__name__)

__all__ = ["MODES", "REDACTED", "Run", "loggable_config", "scrub_secrets", "start_run"]

MODES = ("offline", "online", "disabled")

# Many sweep jobs start runs at once: no console capture, prompts, code or git snapshots.
_QUIET_ENV = {
    "WANDB_SILENT": "true",
    "WANDB_CONSOLE": "off",
    "WANDB_DISABLE_CODE": "true",
    "WANDB_DISABLE_GIT": "true",
}


class Run:
    """One W&B run, or a no-op stand-in (``Run(None)``) when tracking is off or broke.

    With ``opener`` the W&B run is created at the first thing logged, so a stage whose work
    was all done already leaves no run behind. Every method swallows W&B errors: the first
    one is warned about, then the run turns into a no-op so a dead service cannot slow
    every later call.
    """

    def __init__(self, wandb_run: Any = None, mode: str = "disabled",
                 opener: Callable[[], Any] | None = None) -> None:
        self._run = wandb_run
        self._opener = opener if wandb_run is None else None
        self.mode = mode if self.enabled else "disabled"
        self._dir = _run_directory(wandb_run) if wandb_run is not None else None

    @property
    def enabled(self) -> bool:
        """Tracking is on: the run exists, or will at the first thing logged."""
        return self._run is not None or self._opener is not None

    @property
    def started(self) -> bool:
        return self._run is not None

    @property
    def dir(self) -> Path | None:
        """The run directory (holds ``run-<id>.wandb``), or None while nothing is written."""
        return self._dir

    @property
    def id(self) -> str | None:
        return self._run.id if self._run is not None else None

    def log(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        self._call("log", lambda run: run.log(dict(metrics), step=step))

    def log_table(self, key: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        def _log(run: Any) -> None:
            import wandb

            run.log({key: wandb.Table(columns=list(columns), data=[list(r) for r in rows])})

        self._call("log_table", _log)

    def log_image(self, key: str, path: str | os.PathLike, caption: str | None = None) -> None:
        if self.enabled and not Path(path).is_file():
            warnings.warn(f"W&B image {key!r}: no file at {path}; not logged", stacklevel=2)
            return

        def _log(run: Any) -> None:
            import wandb

            run.log({key: wandb.Image(str(path), caption=caption)})

        self._call("log_image", _log)

    def summary(self, values: Mapping[str, Any]) -> None:
        self._call("summary", lambda run: run.summary.update(dict(values)))

    def finish(self, exit_code: int = 0) -> None:
        """Flush and close; idempotent. A run that logged nothing was never created. Offline
        runs log the command that uploads them."""
        run, self._run, self._opener = self._run, None, None
        if run is None:
            return
        try:
            run.finish(exit_code=exit_code)
        except Exception as err:  # tracking must never fail a stage
            warnings.warn(f"W&B finish failed ({err!r}); local outputs are unaffected", stacklevel=2)
            return
        if self.mode == "offline" and self._dir is not None:
            log.info("W&B offline run saved to %s (upload with: wandb sync %s)", self._dir, self._dir)

    def __enter__(self) -> Run:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.finish(exit_code=0 if exc_type is None else 1)

    def _call(self, what: str, action: Any) -> None:
        if self._run is None and not self._open():
            return
        try:
            action(self._run)
        except Exception as err:  # tracking must never fail a stage
            warnings.warn(
                f"W&B {what} failed ({err!r}); tracking is off for the rest of this run, "
                "local outputs are unaffected",
                stacklevel=3,
            )
            run, self._run = self._run, None
            with contextlib.suppress(Exception):
                run.finish(exit_code=1)

    def _open(self) -> bool:
        """Create the deferred W&B run; False when there is none to create or it failed."""
        opener, self._opener = self._opener, None
        if opener is None:
            return False
        try:
            self._run = opener()
        except Exception as err:  # tracking must never fail a stage
            warnings.warn(
                f"W&B could not start ({err!r}); continuing without tracking, local outputs are "
                "unaffected",
                stacklevel=4,
            )
            self.mode = "disabled"
            return False
        self._dir = _run_directory(self._run)
        return True


def start_run(
    cfg: Any,
    stage: str,
    name: str,
    group: str | None = None,
    job_type: str | None = None,
    directory: Path | None = None,
) -> Run:
    """Start the W&B run of one stage job (a fine-tune, a soup stage, an evaluation).

    ``cfg`` is the stage's config; ``cfg.logger`` gives ``mode`` (offline | online |
    disabled), ``dir`` (``directory`` replaces it), ``project``, ``entity``, ``group``, ``tags`` and optionally
    ``init_timeout`` (seconds). The resolved config, secrets removed, is the run's config.
    W&B is started at the first metric, table, image or summary, so a stage whose work was
    all done already logs nothing and writes no run. Never raises on W&B problems: it
    warns and the run becomes a no-op.
    """
    logger_cfg = _logger_config(cfg)
    mode = str(logger_cfg.get("mode") or "offline")
    if mode not in MODES:
        from soup_exp.errors import ConfigError

        raise ConfigError(f"logger.mode={mode!r} is not one of {', '.join(MODES)}")
    if mode == "disabled":
        return Run(None)
    if any(is_secret_key(k) for k in logger_cfg):
        warnings.warn(
            "the logger config holds a key/token entry; it is ignored: W&B reads its API key "
            "from the WANDB_API_KEY environment variable only",
            stacklevel=2,
        )
    if mode == "online" and not os.environ.get("WANDB_API_KEY"):
        warnings.warn(
            "logger.mode=online but WANDB_API_KEY is not set; logging offline instead "
            "(upload later with `wandb sync`)",
            stacklevel=2,
        )
        mode = "offline"
    for key, value in _QUIET_ENV.items():
        os.environ.setdefault(key, value)
    init = _init_arguments(cfg, logger_cfg, mode, stage, name, group, job_type,
                           Path(directory).expanduser().resolve() if directory else logger_directory(cfg))
    return Run(mode=mode, opener=lambda: _init_wandb(init))


def wandb_dir(cfg: Any) -> Path:
    """Where a stage's W&B runs go: ``<logger.dir>/wandb`` (wandb adds the ``wandb/``)."""
    return logger_directory(cfg) / "wandb"


def logger_directory(cfg: Any) -> Path:
    """``logger.dir``, else the stage's ``out_dir``: where its W&B runs go (under ``wandb/``)."""
    return Path(str(config_get(cfg, "logger.dir") or config_get(cfg, "out_dir") or ".")).expanduser().resolve()


def _init_arguments(
    cfg: Any,
    logger_cfg: Mapping[str, Any],
    mode: str,
    stage: str,
    name: str,
    group: str | None,
    job_type: str | None,
    run_dir: Path,
) -> dict[str, Any]:
    """``wandb.init``'s arguments, taken when the stage starts (the config as it was then)."""
    tags = [str(t) for t in (logger_cfg.get("tags") or [])]
    return {
        "mode": mode,
        "dir": str(run_dir),
        "project": logger_cfg.get("project") or "soup-exp",
        "entity": logger_cfg.get("entity") or None,
        "group": group or logger_cfg.get("group") or None,
        "job_type": job_type or stage,
        "name": name,
        "tags": list(dict.fromkeys([*tags, stage])),
        "config": {"stage": stage, **loggable_config(cfg)},
        "init_timeout": float(logger_cfg.get("init_timeout") or 60),
    }


def _init_wandb(init: Mapping[str, Any]) -> Any:
    import wandb

    arguments = dict(init)
    run_dir = Path(arguments["dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    _redirect_unwritable_home_dirs(run_dir / "wandb" / "home")
    settings = wandb.Settings(
        console="off",
        silent=True,
        x_disable_stats=True,
        disable_code=True,
        disable_git=True,
        init_timeout=arguments.pop("init_timeout"),
    )
    return wandb.init(**arguments, reinit="create_new", settings=settings)


# Where W&B (and wandb-core's log, through XDG_CACHE_HOME) write outside the run directory.
_HOME_DIRS = {"WANDB_CONFIG_DIR": ".config/wandb", "WANDB_CACHE_DIR": ".cache/wandb",
              "WANDB_DATA_DIR": ".local/share/wandb", "XDG_CACHE_HOME": ".cache"}


def _redirect_unwritable_home_dirs(fallback: Path) -> None:
    """A cluster user running under a shared or private ``$HOME`` (or none) would get a page
    of W&B permission errors; their per-user folders go under the run directory instead.
    Folders the user set, or can write, are left alone."""
    home = Path(os.environ.get("HOME") or "/nonexistent")
    for variable, relative in _HOME_DIRS.items():
        if os.environ.get(variable) or _writable(home / relative):
            continue
        target = fallback / relative
        target.mkdir(parents=True, exist_ok=True)
        os.environ[variable] = str(target)
        log.info("%s is not writable; W&B uses %s (%s)", home / relative, target, variable)


def _writable(path: Path) -> bool:
    """``path`` exists and is writable, or its nearest existing parent is."""
    try:
        while not path.exists():
            if path.parent == path:
                return False
            path = path.parent
    except OSError:  # a parent this user cannot enter
        return False
    return os.access(path, os.W_OK)


def _logger_config(cfg: Any) -> dict[str, Any]:
    return dict(to_plain(config_get(cfg, "logger")) or {})


def _run_directory(wandb_run: Any) -> Path | None:
    try:
        return Path(wandb_run.settings.sync_dir).resolve()
    except Exception:
        return None
