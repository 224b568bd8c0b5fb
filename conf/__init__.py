"""The Hydra config tree, shipped inside the package as ``soup_exp.conf``.

The repository keeps it at the top level (one primary config per stage, a folder per
config group); pyproject.toml maps it into the wheel so installed copies run every stage.
"""
