"""Tiny ingredients for soup tests: random state dicts, safetensors files and run dirs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from soup_exp.utils.io import atomic_write_json

SHAPES = {"image_encoder.proj": (4, 3), "image_encoder.ln.weight": (3,), "head.weight": (5, 3), "head.bias": (5,)}


def random_state_dict(seed: int, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=g).to(dtype) for k, s in SHAPES.items()}


def write_run(root: Path, name: str, state_dict: dict, **info) -> Path:
    run = root / name
    run.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state_dict.items()}, str(run / "model.safetensors"))
    atomic_write_json(run / "ingredient.json", {"name": name, "kind": "finetune",
                                                "base_model": "test:tiny", **info})
    return run


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture
def make_sd():
    return random_state_dict


@pytest.fixture
def make_run():
    return write_run
