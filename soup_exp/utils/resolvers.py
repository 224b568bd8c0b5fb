"""OmegaConf resolvers used by the config tree (registered when soup_exp is imported)."""

from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import Iterator
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


_PLANNED_JOB: contextvars.ContextVar[int | None] = contextvars.ContextVar("planned_job", default=None)


@contextlib.contextmanager
def planned_job(number: int) -> Iterator[None]:
    """Resolve ``soup.job_num`` as job ``number`` of a multirun that has not started yet
    (the preflight composes every job to check that their outputs do not collide)."""
    token = _PLANNED_JOB.set(number)
    try:
        yield
    finally:
        _PLANNED_JOB.reset(token)


def job_number(default: Any) -> Any:
    """``${soup.job_num:${sweep.index}}``: the job's number in a multirun (Hydra's
    ``hydra.job.num``, as its sweep folders 0/, 1/, ...), ``default`` in a single run, so a
    sweep over plain overrides (``'train.lr=1e-3,1e-4'``) names each job's ingredient apart."""
    planned = _PLANNED_JOB.get()
    if planned is not None:
        return planned
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if HydraConfig.initialized():
        hydra = HydraConfig.get()
        if hydra.mode == RunMode.MULTIRUN and OmegaConf.select(hydra, "job.num") is not None:
            return int(hydra.job.num)
    return default


RESOLVERS = {
    # The launch directory, so relative defaults become absolute before jobs move around.
    "soup.cwd": lambda: os.getcwd(),
    "soup.pad": pad_index,
    "soup.member_seed": member_seed,
    "soup.job_num": job_number,
}


def register_resolvers() -> None:
    for name, fn in RESOLVERS.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)
