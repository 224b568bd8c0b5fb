"""Every on-disk contract in one place: run and soup directories (:mod:`.dirs`), the one
reader of an experiment's models into typed records (:mod:`.models`) and the
``results.jsonl`` file (:mod:`.results`). Stages read and write artefacts only through
these modules, so a layout is defined once."""

from soup_exp.artifacts.dirs import (
    INGREDIENT_FILE,
    RUN_FILE,
    SOUP_FILE,
    WEIGHTS_FILE,
    ArtifactError,
    CheckpointMismatchError,
    check_name,
    find_dirs,
    ingredient_record,
    is_finished_run,
    is_finished_soup,
    load_state_dict_strict,
    load_weights,
    natural_key,
    pool_paths,
    portable_path,
    read_record,
    read_weights,
    recorded_ingredient_paths,
    run_weights,
    runs_at,
    soup_record,
    weights_file,
    write_run,
    write_soup_dir,
    write_weights,
)
from soup_exp.artifacts.models import (
    Ensemble,
    Model,
    SoupCost,
    SoupRecord,
    WeightsModel,
    check_unique_names,
    read_models,
    read_run,
    read_runs,
    read_soups,
    resolve_member,
    soup_model,
    soup_records,
)

__all__ = [
    "INGREDIENT_FILE", "RUN_FILE", "SOUP_FILE", "WEIGHTS_FILE", "ArtifactError", "CheckpointMismatchError",
    "check_name", "find_dirs", "ingredient_record", "is_finished_run", "is_finished_soup",
    "load_state_dict_strict", "load_weights", "natural_key", "pool_paths", "portable_path", "read_record", "read_weights",
    "recorded_ingredient_paths", "run_weights", "runs_at", "soup_record",
    "weights_file", "write_run", "write_soup_dir", "write_weights",
    "Ensemble", "Model", "SoupCost", "SoupRecord", "WeightsModel", "check_unique_names", "read_models", "read_run", "read_runs",
    "read_soups", "resolve_member", "soup_model", "soup_records",
]
