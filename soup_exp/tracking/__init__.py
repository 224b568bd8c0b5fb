"""Experiment tracking: W&B runs that never stop a stage."""

from soup_exp.tracking.wandb_run import Run, loggable_config, scrub_secrets, start_run

__all__ = ["Run", "loggable_config", "scrub_secrets", "start_run"]
