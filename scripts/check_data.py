"""Check every configured dataset root against the layout its download unpacks to.

    python scripts/check_data.py [--verify] [--datasets ImageNet ObjectNet] [hydra overrides]
    python scripts/check_data.py paths.data_dir=/data/imagenet-family
    python scripts/check_data.py data=synthetic          # the demo's family, once its data stage made it

Prints a table (found/missing, class folders, image counts vs the official counts), a
note per problem, and, when a dataset is missing or malformed, a last line naming each
such dataset; then exits 1. ``soup-exp evaluate check_data=true``
runs the same check.
"""

from __future__ import annotations

import argparse
import sys

from hydra import compose, initialize_config_dir

from soup_exp.data.checker import check_datasets, raise_on_failure, render_table
from soup_exp.errors import SoupExpError
from soup_exp.stages.entry import packaged_config_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--verify", action="store_true", help="decode every image (slow)")
    parser.add_argument("--datasets", nargs="+", default=None,
                        help="names to check (default: ImageNet train + every configured root)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. data=synthetic")
    args = parser.parse_args(argv)
    # `--datasets A B key=value` : argparse gives the override to --datasets; it is an override
    names = [d for d in args.datasets or [] if "=" not in d] or None
    overrides = [d for d in args.datasets or [] if "=" in d] + args.overrides
    with initialize_config_dir(config_dir=str(packaged_config_dir()), version_base=None):
        cfg = compose(config_name="evaluate", overrides=overrides)
    try:
        reports = check_datasets(cfg.data, names, verify=args.verify)
        print(render_table(reports, data_dir=str(cfg.paths.data_dir)), flush=True)
        raise_on_failure(reports)  # the last line says what failed, as `evaluate check_data=true`'s
    except SoupExpError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
