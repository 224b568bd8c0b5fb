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


def member_seed(sweep_seed: Any, index: Any) -> int:
    """``${soup.member_seed:${sweep.seed},${sweep.index}}``: a sweep member's own training
    seed (data order, augmentation draws), distinct across members and sweep seeds, as the
    separate runs of a random search have."""
    import numpy as np

    return int(np.random.SeedSequence([int(sweep_seed), int(index)]).generate_state(1)[0] % 2**31)


RESOLVERS = {
    # The launch directory, so relative defaults become absolute before jobs move around.
    "soup.cwd": lambda: os.getcwd(),
    "soup.pad": pad_index,
    "soup.member_seed": member_seed,
}


def register_resolvers() -> None:
    for name, fn in RESOLVERS.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)
