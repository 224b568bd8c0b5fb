"""Reading configs that may be OmegaConf nodes, plain dicts or simple objects.

Stages take the composed DictConfig, while library functions and tests also pass plain
mappings; these two helpers let both read the same way.
"""

from __future__ import annotations

from typing import Any

from omegaconf import OmegaConf


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
