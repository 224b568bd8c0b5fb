"""How a stage runs: its entry point and registry (entry), the checks and the plan before
Hydra starts it (preflight), its one-line errors and output claims (experiment), its help."""
