"""OmegaConf resolvers used by the config tree (registered when soup_exp is imported)."""

from __future__ import annotations

import os
from typing import Any

from omegaconf import OmegaConf


def pad_index(value: Any, width: Any = 3) -> str:
    """``${soup.pad:${sweep.index},3}`` -> ``007``: sortable sweep member names."""
    try:
        return f"{int(value):0{int(width)}d}"
    except (TypeError, ValueError) as err:
        from soup_exp.errors import ConfigError

        raise ConfigError(f"soup.pad: {value!r} is not an integer (sweep.index must be one)") from err


RESOLVERS = {
    # The launch directory, so relative defaults become absolute before jobs move around.
    "soup.cwd": lambda: os.getcwd(),
    "soup.pad": pad_index,
}


def register_resolvers() -> None:
    for name, fn in RESOLVERS.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)
