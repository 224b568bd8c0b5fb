"""What ``soup-exp <stage> --help`` prints: what the stage does, its main options, examples.

Plain text kept beside the stage registry, so help needs no config composition and no
import of torch (it returns in well under a second). The whole composed configuration
stays one flag away: ``soup-exp <stage> --cfg job``.
"""

from __future__ import annotations

HELP_FLAGS = ("--help", "-h")

_COMMON = """\
every stage:
  name=NAME                 experiment: outputs in ${paths.output_dir}/NAME (default outputs/default)
  experiment=demo|smoke|debug   an overlay of settings (yours with --config-dir DIR)
  device=auto|cpu|cuda      num_workers=N   logger=wandb|disabled   logger.mode=offline|online
  --dry-run                 list what the run would do and what is already done; write nothing
  --config-dir DIR          your configs (recipes, analyses, datasets, models, experiments), searched first
  --cfg job                 print the whole composed configuration (Hydra) and exit"""

_TEXT: dict[str, tuple[str, str, str]] = {
    "import": (
        "Import the authors' 72 released ViT-B/32 checkpoints (model_<i>.pt) as ingredients,\n"
        "offline: each becomes <ingredients_dir>/model_<i>/ with its published held-out accuracy\n"
        "and hyperparameters. Files are read with torch.load(weights_only=True).",
        "  checkpoints=DIR           folder holding model_0.pt ... model_71.pt (required)\n"
        "  results=FILE              the authors' individual_model_results.jsonl (packaged copy by default)\n"
        "  hparams=FILE              their hparam_info.json (packaged copy by default)",
        "  soup-exp import checkpoints=/data/model-soups name=release",
    ),
    "finetune": (
        "Fine-tune one ingredient: the zero-shot classifier, the LP init (linear probe on frozen\n"
        "features) or an end-to-end fine-tune with the paper's recipe. With -m, a Hydra multirun\n"
        "trains a sweep; each job writes <ingredients_dir>/<name>/ (model.safetensors +\n"
        "ingredient.json) and resumes from its checkpoint when rerun.",
        "  sweep=none|zeroshot|lp_init|paper_vitb32|replay|demo   where hyperparameters come from\n"
        "  sweep.index=I             member I of a random sweep (-m 'sweep.index=range(71)')\n"
        "  train.lr=  train.weight_decay=  train.epochs=  train.batch_size=  train.warmup_steps=\n"
        "  train.init_from=DIR       start from this ingredient (LP-FT)\n"
        "  launcher=local|submitit_local|slurm   where multirun jobs run (hydra.launcher.* to tune)",
        "  soup-exp finetune sweep=lp_init\n"
        "  soup-exp finetune -m sweep=paper_vitb32 'sweep.index=range(71)' launcher=slurm\n"
        "  soup-exp finetune -m experiment=debug 'train.lr=1e-3,1e-4'",
    ),
    "soup": (
        "Cook the selected recipes from a pool of ingredients: uniform, greedy and learned soups,\n"
        "Model Stock, logit ensembles, WiSE-FT, or your own recipe. Weights are read one tensor at\n"
        "a time, so memory does not grow with the pool. Each recipe writes <soups_dir>/<recipe>/.",
        "  recipes=[uniform,greedy,...]   which recipes (recipe_set=paper: all the paper's)\n"
        "  recipes.greedy.tolerance=X     a recipe's parameters (conf/recipes/<name>.yaml)\n"
        "  soup.pool=DIR|GLOB|[...]       the ingredients (default: <ingredients_dir>)\n"
        "  soup.arithmetic=authors|sum    the authors' running average, bit for bit, or sum-then-divide\n"
        "  eval.precision=fp32|bf16       numerics of the held-out evaluations",
        "  soup-exp soup name=demo 'recipes=[uniform,greedy]'\n"
        "  soup-exp soup experiment=demo",
    ),
    "evaluate": (
        "Evaluate every model and soup of the experiment on the held-out split, ImageNet and the\n"
        "five shifts (ImageNetV2, Sketch, R, ObjectNet, A); one row per model in results.jsonl.\n"
        "Models already evaluated for the same weights and data are skipped.",
        "  models=all|[name,...]     which models\n"
        "  eval.datasets=[...]       which evaluation sets\n"
        "  check_data=true           check every dataset's layout and image counts, evaluate nothing\n"
        "  paths.data_dir=DIR        where datasets live (or SOUP_DATA_DIR)",
        "  soup-exp evaluate check_data=true\n"
        "  soup-exp evaluate name=demo",
    ),
    "analyze": (
        "Run the analyses the paper argues from on the experiment's pool: error landscape, angle\n"
        "vs soup gain, number of ingredients, greedy ablations, calibration (docs/analysis.md).\n"
        "Finished analyses are skipped; interrupted ones resume.",
        "  analyses=[landscape,angles,...]   which analyses (analysis_set=paper: all five)\n"
        "  analyses.<name>.<param>=...       an analysis's parameters (conf/analyses/<name>.yaml)",
        "  soup-exp analyze name=demo 'analyses=[landscape,angles]'",
    ),
    "report": (
        "Write the paper's table (Markdown, LaTeX, CSV) and figures from results files, with the\n"
        "published numbers beside yours, and the analyses' figures (analyses.md).",
        "  results=FILE|DIR|paper_vitb32   what to report (default: the experiment's results.jsonl)\n"
        "  compare=paper_vitb32            the published ViT-B/32 numbers side by side\n"
        "  formats=[md,tex,csv]            per_recipe=best|all",
        "  soup-exp report name=demo compare=paper_vitb32\n"
        "  soup-exp report results=paper_vitb32",
    ),
    "pipeline": (
        "Run every stage in order for one experiment: data, fine-tuning sweep, soups,\n"
        "evaluation, analyses, report. Finished work is skipped, so a rerun resumes.",
        "  pipeline.stages=[...]     which stages (data, finetune, soup, evaluate, analyze, report)\n"
        "  pipeline.sweep_size=N     end-to-end fine-tunes besides the LP init\n"
        "  sweep.seed=N              draw another sweep (give it its own name=)\n"
        "  ++sweep.space.<key>=...   change the search space\n"
        "  launcher=slurm            run the sweep's jobs on SLURM (hydra.launcher.* forwarded)",
        "  soup-exp pipeline experiment=demo\n"
        "  soup-exp pipeline experiment=demo --dry-run\n"
        "  soup-exp pipeline experiment=demo 'pipeline.stages=[analyze,report]'",
    ),
}


def wants_help(args: list[str]) -> bool:
    """``--help`` or ``-h`` among a stage's arguments (Hydra's ``--hydra-help`` is left to Hydra)."""
    return any(a in HELP_FLAGS for a in args)


def stage_help(name: str) -> str:
    what, options, examples = _TEXT[name]
    return "\n".join([
        f"usage: soup-exp {name} [--config-dir DIR] [--dry-run] [-m] [key=value ...]",
        "",
        what,
        "",
        "main options:",
        options,
        "",
        _COMMON,
        "",
        "examples:",
        examples,
    ])
