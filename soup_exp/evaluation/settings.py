"""What an evaluator is built from: the stage's ``eval`` and ``data`` subtrees, its device,
worker count and progress switch, read once into a frozen record.

The evaluation library never sees the root config: a stage calls
:meth:`EvalSettings.from_config` and hands the record to
:func:`~soup_exp.evaluation.evaluator.build_evaluator`. Unknown values are caught here,
one line naming the key.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from omegaconf import DictConfig

from soup_exp.utils.config import check_choice, frozen_subtree

ENSEMBLE_LOGITS = ("projected", "raw")
PRECISIONS = ("fp32", "bf16")


@dataclass(frozen=True)
class EvalSettings:
    """Everything :func:`~soup_exp.evaluation.evaluator.build_evaluator` reads."""

    datasets: tuple[str, ...]  # eval.datasets
    data: DictConfig  # the data subtree (roots, held-out split, classes, user datasets)
    batch_size: int
    num_workers: int  # eval.num_workers, or the top-level num_workers when that is null
    device: str
    precision: str
    cache_dir: str | None  # eval.cache.dir when eval.cache.enabled
    progress: bool
    read_threads: int
    ensemble_logits: str

    def __post_init__(self) -> None:
        check_choice("eval.precision", self.precision, PRECISIONS)
        check_choice("eval.ensemble_logits", self.ensemble_logits, ENSEMBLE_LOGITS)

    @classmethod
    def from_config(cls, cfg: Mapping) -> EvalSettings:
        """The settings of a stage config (its ``eval``, ``data``, ``device``,
        ``num_workers`` and ``progress``)."""
        eval_cfg = cfg["eval"]
        cache = eval_cfg["cache"]
        workers = eval_cfg["num_workers"] if eval_cfg["num_workers"] is not None else cfg["num_workers"]
        return cls(
            datasets=tuple(str(name) for name in eval_cfg["datasets"]),
            data=frozen_subtree(cfg["data"]),
            batch_size=int(eval_cfg["batch_size"]),
            num_workers=int(workers),
            device=str(cfg["device"]),
            precision=str(eval_cfg["precision"]),
            cache_dir=str(cache["dir"]) if cache["enabled"] and cache["dir"] else None,
            progress=bool(cfg["progress"]),
            read_threads=int(eval_cfg["read_threads"]),
            ensemble_logits=str(eval_cfg["ensemble_logits"]),
        )
