"""What the soup stage's context is built from: the ``soup`` subtree's numerics, the seed,
the progress switch and the two folders it reads and writes, read once and checked.

The stage calls :meth:`SoupSettings.from_config`; the soup library takes the record, never
the root config. This is the one check of ``soup.accumulate_dtype`` and ``soup.arithmetic``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from soup_exp.soups.streaming import ARITHMETICS
from soup_exp.utils.config import check_choice

ACCUMULATE_DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass(frozen=True)
class SoupSettings:
    """The soup stage's own settings (``soup.*``, ``seed``, ``progress``, the folders)."""

    accumulate_dtype: torch.dtype
    arithmetic: str  # authors | sum
    kernel_device: str  # where per-tensor kernels compute (resolved when they run)
    seed: int
    progress: bool
    soups_dir: Path
    zeroshot_dir: Path

    @classmethod
    def from_config(cls, cfg: Mapping) -> SoupSettings:
        soup = cfg["soup"]
        return cls(
            accumulate_dtype=ACCUMULATE_DTYPES[check_choice("soup.accumulate_dtype", str(soup["accumulate_dtype"]),
                                                            tuple(ACCUMULATE_DTYPES))],
            arithmetic=check_choice("soup.arithmetic", str(soup["arithmetic"]), ARITHMETICS),
            kernel_device=str(soup["kernel_device"]),
            seed=int(cfg["seed"]),
            progress=bool(cfg["progress"]),
            soups_dir=Path(str(cfg["soups_dir"])),
            zeroshot_dir=Path(str(cfg["zeroshot_dir"])),
        )

    @property
    def accumulate_dtype_name(self) -> str:
        """``soup.accumulate_dtype`` as written in the config (``float32`` or ``float64``)."""
        return str(self.accumulate_dtype).removeprefix("torch.")
