"""The data stage's steps: the callables ``data.prepare`` and ``model.prepare`` name.

Some inputs do not exist until something makes them: the demo generates its miniature
ImageNet family and pretrains its tiny CLIP (``soup_exp.demo``). A maker is a plugin
like any other, one callable named by ``_target_`` in the data or model config::

    # conf/data/my_data.yaml
    prepare:
      _target_: my_pkg.make_data   # called as my_pkg.make_data(cfg.data, **the other keys)

The pipeline's data stage runs ``data.prepare``, then ``model.prepare`` (which may read
what the first made), each given its own config subtree; a step returns at once when its
output is already there. Nothing else makes data: the readers, the evaluator and the
checks only read, so a stage started before the data stage finds the roots missing and
says to run it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from soup_exp.errors import ConfigError
from soup_exp.utils.config import to_plain
from soup_exp.utils.plugins import Plugin, load_plugin

log = logging.getLogger(__name__)

SECTIONS = ("data", "model")  # in this order: a model's step may read what the data's made


def input_steps(cfg: Mapping[str, Any]) -> list[tuple[str, Plugin]]:
    """``(section, step)`` of each configured step, resolved and its parameters checked."""
    steps = []
    for section in SECTIONS:
        node = to_plain((cfg.get(section) or {}).get("prepare"))
        if node is None:
            continue
        if not isinstance(node, Mapping):
            raise ConfigError(f"{section}.prepare={node!r}: expected a mapping whose _target_ names the "
                              "callable that makes the inputs (docs/extending.md, Inputs made before the run)")
        steps.append((section, load_plugin(section, "prepare", node)))
    return steps


def prepare_inputs(cfg: Mapping[str, Any]) -> None:
    """Run every configured step with its section of ``cfg``."""
    for section, step in input_steps(cfg):
        log.info("data stage: %s.prepare (%s)", section, step.target)
        step(cfg[section])
