"""Experiment tracking: W&B runs that never stop a stage, and the results.jsonl store."""

from soup_exp.tracking.results import ResultsStore, read_results
from soup_exp.tracking.wandb_run import Run, loggable_config, scrub_secrets, start_run

__all__ = ["ResultsStore", "Run", "loggable_config", "read_results", "scrub_secrets", "start_run"]
