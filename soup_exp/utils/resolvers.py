"""OmegaConf resolvers used by the config tree (registered when soup_exp is imported)."""

from __future__ import annotations

import os

from omegaconf import OmegaConf


def register_resolvers() -> None:
    # The launch directory, so relative defaults become absolute before jobs move around.
    if not OmegaConf.has_resolver("soup.cwd"):
        OmegaConf.register_new_resolver("soup.cwd", lambda: os.getcwd())
