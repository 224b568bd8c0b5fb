"""Fixtures for fine-tuning tests: a miniature ImageNet train tree and composed configs
(the tree and the overrides live in tests/tiny_finetune.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from tiny_finetune import tiny_overrides, write_tiny_imagenet

from soup_exp.stages.entry import packaged_config_dir

CONF = packaged_config_dir()


def compose_finetune(root: Path, *extra: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="finetune", overrides=tiny_overrides(root, *extra))


@pytest.fixture
def tiny_root(tmp_path: Path) -> Path:
    torch.set_num_threads(1)
    write_tiny_imagenet(tmp_path / "data")
    return tmp_path


@pytest.fixture
def compose_tiny():
    """``compose_tiny(root, *overrides)`` -> the finetune config for the miniature setup."""
    return compose_finetune


@pytest.fixture
def tiny_cli_overrides():
    """``tiny_cli_overrides(root, *extra)`` -> the same overrides, for `soup-exp finetune`."""
    return tiny_overrides
