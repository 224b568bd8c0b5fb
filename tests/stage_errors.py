"""The contract of a user error at stage level: one line on stderr, no traceback, exit 2."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from soup_exp.stages.experiment import run_stage


def stage_error(cfg: Any, stage: Callable[[Any], Any], capsys: Any) -> str:
    """What ``run_stage(cfg, stage)`` prints for a user error; fails the test otherwise."""
    with pytest.raises(SystemExit) as exit_:
        run_stage(cfg, stage)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    return err
