"""Running on clusters: SLURM queries, preflight checks and the signals jobs receive."""
