"""Reading configs that may be OmegaConf nodes, plain dicts or simple objects, and keeping
their secrets out of everything written.

Stages take the composed DictConfig, while library functions and tests also pass plain
mappings; ``to_plain`` and ``config_get`` let both read the same way.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

from omegaconf import OmegaConf, open_dict

from soup_exp.errors import ConfigError


def to_plain(value: Any) -> Any:
    """Resolved Python containers for an OmegaConf node; anything else unchanged."""
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def config_get(cfg: Any, dotted: str, default: Any = None) -> Any:
    """``cfg.a.b`` for ``dotted="a.b"``, or ``default`` when a level is missing or null."""
    node = cfg
    for part in dotted.split("."):
        if node is None:
            return default
        node = node.get(part) if hasattr(node, "get") else getattr(node, part, None)
    return default if node is None else node


# ---- secrets ------------------------------------------------------------------------------
# Config entries whose key names one of these never reach a file, a log, the W&B run or a
# command line. Overrides of such keys are taken off the command line before Hydra sees it
# and travel to the stage (and to the jobs it starts) in the environment.

SECRET_MARKERS = ("key", "token", "secret", "password")
REDACTED = "<redacted>"
SECRETS_ENV = "SOUP_EXP_SECRET_OVERRIDES"


def is_secret_key(key: Any) -> bool:
    """Whether a config key (or any part of a dotted key) names a key/token/secret/password."""
    return any(marker in part.lower() for part in str(key).split(".") for marker in SECRET_MARKERS)


def scrub_secrets(obj: Any, secret_values: Sequence[str] = ()) -> Any:
    """Drop every entry whose key names a key/token/secret/password; redact any string
    that contains one of ``secret_values`` (the live API key, wherever it was pasted)."""
    if isinstance(obj, Mapping):
        return {k: scrub_secrets(v, secret_values) for k, v in obj.items() if not is_secret_key(k)}
    if isinstance(obj, list | tuple):
        return [scrub_secrets(v, secret_values) for v in obj]
    if isinstance(obj, str) and any(s and s in obj for s in secret_values):
        return REDACTED
    return obj


def loggable_config(cfg: Any) -> dict[str, Any]:
    """The resolved config as plain data, secrets removed: what every saved or logged
    config holds (ingredient.json, pipeline.json, the W&B run, config hashes)."""
    if OmegaConf.is_config(cfg):
        try:
            plain = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
        except Exception:  # an unresolvable interpolation must not stop logging
            plain = OmegaConf.to_container(cfg, resolve=False)
    elif isinstance(cfg, Mapping):
        plain = dict(cfg)
    else:
        plain = {}
    api_key = os.environ.get("WANDB_API_KEY", "")
    return scrub_secrets(plain, [api_key] if len(api_key) >= 8 else [])


def split_secret_overrides(args: Sequence[str]) -> tuple[list[str], list[str]]:
    """``(the other arguments, the overrides that set a secret-named key)``.

    Hydra would keep the secret ones in its saved overrides, sweep file and job names,
    and W&B records the command line; so they never get that far (see :func:`hand_over_secrets`).
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    public: list[str] = []
    secret: list[str] = []
    for arg in args:
        try:
            override = parser.parse_override(arg) if not arg.startswith("-") else None
        except Exception:  # not an override (a flag's value) or malformed: Hydra reports it
            override = None
        is_secret = (override is not None and not override.is_delete()
                     and not override.key_or_group.startswith("hydra.") and is_secret_key(override.key_or_group))
        (secret if is_secret else public).append(arg)
    return public, secret


def hand_over_secrets(overrides: Sequence[str]) -> None:
    """Keep secret overrides in this process's environment, which the stage and every job it
    starts (the pipeline's sweep, submitit and SLURM jobs) inherit; never on a command line."""
    if overrides:
        os.environ[SECRETS_ENV] = json.dumps([*secret_overrides(), *overrides])


def secret_overrides() -> list[str]:
    text = os.environ.get(SECRETS_ENV)
    if not text:
        return []
    try:
        overrides = json.loads(text)
    except ValueError as err:
        raise ConfigError(f"{SECRETS_ENV} must hold a JSON list of overrides ({err})") from err
    if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
        raise ConfigError(f"{SECRETS_ENV} must hold a JSON list of override strings")
    return overrides


def apply_secret_overrides(cfg: Any) -> Any:
    """A copy of a composed config with the secret overrides handed over in the environment
    (a copy: Hydra and submitit keep the config they passed, e.g. in job result pickles)."""
    overrides = secret_overrides()
    if not overrides:
        return cfg
    from hydra.core.override_parser.overrides_parser import OverridesParser

    cfg = copy.deepcopy(cfg)
    for override in OverridesParser.create().parse_overrides(overrides):
        key = override.key_or_group
        if override.is_sweep_override():
            raise ConfigError(f"{key}: a secret-named key cannot be swept")
        with open_dict(cfg):
            OmegaConf.update(cfg, key, override.value(), merge=True, force_add=True)
    return cfg
