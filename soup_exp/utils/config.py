"""Reading configs that may be OmegaConf nodes, plain dicts or simple objects, and keeping
their secrets out of everything written.

Stages take the composed DictConfig, while library functions and tests also pass plain
mappings; ``to_plain`` and ``config_get`` let both read the same way.
"""

from __future__ import annotations

import copy
import json
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

from omegaconf import OmegaConf, open_dict

from soup_exp.errors import ConfigError


def to_plain(value: Any) -> Any:
    """Resolved Python containers for an OmegaConf node; anything else unchanged."""
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def check_choice(key: str, value: Any, choices: Sequence[str]) -> Any:
    """``value`` when it is one of ``choices``; else one line naming the config ``key``."""
    if value not in choices:
        raise ConfigError(f"{key}={value!r}: expected one of {', '.join(choices)}")
    return value


def frozen_subtree(node: Any) -> Any:
    """A resolved, read-only copy of a config subtree, detached from the root config, so a
    library handed it cannot reach other sections (interpolations are resolved first)."""
    copy = OmegaConf.create(to_plain(node) or {})
    OmegaConf.set_readonly(copy, True)
    return copy


def config_get(cfg: Any, dotted: str, default: Any = None) -> Any:
    """``cfg.a.b`` for ``dotted="a.b"``, or ``default`` when a level is missing or null."""
    node = cfg
    for part in dotted.split("."):
        if node is None:
            return default
        node = node.get(part) if hasattr(node, "get") else getattr(node, part, None)
    return default if node is None else node


# ---- secrets ------------------------------------------------------------------------------
# Config entries whose key names a secret never reach a file, a log, the W&B run or a
# command line. Overrides of such keys are taken off the command line before Hydra sees it
# and travel to the stage (and to the jobs it starts) in the environment; the values of
# secrets (and of WANDB_API_KEY) are redacted wherever else they were pasted.
#
# A key is split into words at ``.``, ``_``, ``-`` and lower-to-upper case changes
# (``hfToken`` -> hf, token). It names a secret when any word is in SECRET_WORDS
# (``db_password``, ``credentials``, ``secret_sauce``), or its last word is in
# SECRET_LAST_WORDS (``hf_token``, ``api_key``, ``hf_auth``; not ``train_token_embedding``).

SECRET_WORDS = frozenset({"secret", "secrets", "password", "passwords", "passwd", "passphrase", "pwd",
                          "credential", "credentials", "creds", "apikey", "privatekey"})
SECRET_LAST_WORDS = SECRET_WORDS | {"key", "token", "auth"}
MIN_SECRET_CHARS = 8  # shorter secret values are dropped with their key but not searched for elsewhere
REDACTED = "<redacted>"
SECRETS_ENV = "SOUP_EXP_SECRET_OVERRIDES"
_WORD_BREAK = re.compile(r"[._\-]+|(?<=[a-z0-9])(?=[A-Z])")


def key_words(key: Any) -> list[str]:
    """The lower-case words of one key part: ``hfAuth_token`` -> ``["hf", "auth", "token"]``."""
    return [w.lower() for w in _WORD_BREAK.split(str(key)) if w]


def is_secret_key(key: Any) -> bool:
    """Whether a config key (or any part of a dotted key) names a secret (see SECRET_WORDS)."""
    for part in str(key).split("."):
        words = key_words(part)
        if words and (words[-1] in SECRET_LAST_WORDS or any(w in SECRET_WORDS for w in words)):
            return True
    return False


def holds_secret(value: Any) -> bool:
    """Whether a (nested) value has a secret-named key anywhere: ``{creds: {token: X}}``."""
    if isinstance(value, Mapping):
        return any(is_secret_key(k) or holds_secret(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(holds_secret(v) for v in value)
    return False


def secret_values_in(obj: Any, inside_secret: bool = False) -> set[str]:
    """The values (as text) of every secret-named entry of ``obj``, long enough to search for."""
    found: set[str] = set()
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            found |= secret_values_in(v, inside_secret or is_secret_key(k))
    elif isinstance(obj, list | tuple):
        for v in obj:
            found |= secret_values_in(v, inside_secret)
    elif inside_secret and obj is not None and not isinstance(obj, bool):
        text = str(obj)
        if len(text) >= MIN_SECRET_CHARS and not text.startswith("${"):
            found.add(text)
    return found


def known_secret_values(*configs: Any) -> list[str]:
    """Every secret value this process knows: ``WANDB_API_KEY``, the handed-over secret
    overrides, and the secret-named entries of ``configs`` (plain data or OmegaConf)."""
    values = set()
    api_key = os.environ.get("WANDB_API_KEY", "")
    if len(api_key) >= MIN_SECRET_CHARS:
        values.add(api_key)
    for item in _handed_over():
        values |= secret_values_in({item[0]: item[1]} if isinstance(item, list) else _override_as_mapping(item))
    for cfg in configs:
        values |= secret_values_in(_unresolved(cfg))
    return sorted(values, key=len, reverse=True)


def _unresolved(cfg: Any) -> Any:
    return OmegaConf.to_container(cfg, resolve=False) if OmegaConf.is_config(cfg) else cfg


def _override_as_mapping(text: str) -> dict[str, Any]:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        override = OverridesParser.create().parse_override(text)
        return {override.key_or_group: override.value()}
    except Exception:  # reported when the override is applied
        return {}


def scrub_secrets(obj: Any, secret_values: Sequence[str] = ()) -> Any:
    """Drop every entry whose key names a secret; redact any string that contains one of
    ``secret_values`` (the live API key, wherever it was pasted)."""
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
    return scrub_secrets(plain, known_secret_values(plain))


def split_secret_overrides(args: Sequence[str]) -> tuple[list[str], list[str]]:
    """``(the other arguments, the overrides that set a secret)``: a secret-named key, or a
    value holding one (``+creds={token:X}``), ``hydra.*`` keys included.

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
        is_secret = override is not None and not override.is_delete() and (
            is_secret_key(override.key_or_group)
            or (not override.is_sweep_override() and holds_secret(override.value())))
        (secret if is_secret else public).append(arg)
    return public, secret


HYDRA_ENV_SET = "hydra.job.env_set."


def hand_over_secrets(overrides: Sequence[str]) -> None:
    """Keep secret overrides in this process's environment, which the stage and every job it
    starts (the pipeline's sweep, submitit and SLURM jobs) inherit; never on a command line.

    ``hydra.job.env_set.NAME=X`` sets the variable itself; other ``hydra.*`` settings are
    saved in ``hydra.yaml``, so a secret there is refused.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    kept = []
    for text, override in zip(overrides, OverridesParser.create().parse_overrides(overrides), strict=True):
        key = override.key_or_group
        if key.startswith(HYDRA_ENV_SET) and key.count(".") == 3 and not override.is_sweep_override():
            os.environ[key.removeprefix(HYDRA_ENV_SET)] = str(override.value())
        elif key.startswith("hydra."):
            raise ConfigError(f"{key}: Hydra saves its settings in hydra.yaml, so a secret cannot be one; "
                              "pass it in the environment (or hydra.job.env_set.NAME=...)")
        else:
            kept.append(text)
    if kept:
        stash_secrets(kept)


def stash_secrets(items: Sequence[str | list[Any]]) -> None:
    """Add overrides (``+hf_token=X``) or ``[dotted key, value]`` pairs to the secrets the
    stage will set on its config (:func:`apply_secret_overrides`)."""
    os.environ[SECRETS_ENV] = json.dumps([*_handed_over(), *items])


def _handed_over() -> list[str | list[Any]]:
    text = os.environ.get(SECRETS_ENV)
    if not text:
        return []
    try:
        items = json.loads(text)
    except ValueError as err:
        raise ConfigError(f"{SECRETS_ENV} must hold a JSON list of overrides ({err})") from err
    if not isinstance(items, list) or not all(
            isinstance(o, str) or (isinstance(o, list) and len(o) == 2 and isinstance(o[0], str)) for o in items):
        raise ConfigError(f"{SECRETS_ENV} must hold a JSON list of override strings")
    return items


def secret_overrides() -> list[str]:
    """The handed-over secret overrides (command-line form)."""
    return [o for o in _handed_over() if isinstance(o, str)]


def apply_secret_overrides(cfg: Any) -> Any:
    """A copy of a composed config with the secrets handed over in the environment set on
    it (a copy: Hydra and submitit keep the config they passed, e.g. in job result pickles)."""
    items = _handed_over()
    if not items:
        return cfg
    from hydra.core.override_parser.overrides_parser import OverridesParser

    cfg = copy.deepcopy(cfg)
    parser = OverridesParser.create()
    for item in items:
        if isinstance(item, list):
            key, value = item
        else:
            override = parser.parse_override(item)
            key = override.key_or_group
            if override.is_sweep_override():
                raise ConfigError(f"{key}: a secret-named key cannot be swept")
            value = override.value()
        with open_dict(cfg):
            OmegaConf.update(cfg, key, value, merge=True, force_add=True)
    return cfg


def take_secrets_out(cfg: Any, values: Sequence[str]) -> list[list[Any]]:
    """Remove, in place, every secret-named entry of a composed config outside ``hydra``
    and redact each string holding one of ``values``; return ``[dotted key, original]`` for
    each, so the stage can set them back (:func:`stash_secrets`). Nothing changes unless
    every original can be handed over (is JSON)."""
    from omegaconf import DictConfig, ListConfig, read_write

    taken: list[list[Any]] = []
    changes: list[tuple[Any, Any, bool]] = []  # (node, key, delete rather than redact)

    def visit(node: Any, prefix: str) -> None:
        keys = list(node.keys()) if isinstance(node, DictConfig) else range(len(node))
        for key in keys:
            if prefix == "" and key == "hydra":
                continue
            dotted = f"{prefix}{key}"
            child = node._get_node(key)
            raw = _unresolved(child) if isinstance(child, DictConfig | ListConfig) else child._value()
            if isinstance(node, DictConfig) and is_secret_key(key):
                taken.append([dotted, raw])
                changes.append((node, key, True))
            elif isinstance(child, DictConfig | ListConfig):
                visit(child, f"{dotted}.")
            elif isinstance(raw, str) and any(v in raw for v in values):
                taken.append([dotted, raw])
                changes.append((node, key, False))

    if not OmegaConf.is_config(cfg):
        return taken
    visit(cfg, "")
    json.dumps(taken)
    with read_write(cfg), open_dict(cfg):
        for node, key, delete in changes:
            if delete:
                del node[key]
            else:
                node[key] = REDACTED
    return taken
