"""A default lives in one place, the YAML: no ``.get("<key>", <fallback>)`` in soup_exp
for a key the composed configs define (docs/architecture.md, "Each value has one home")."""

from __future__ import annotations

import ast
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

import soup_exp
from soup_exp.stages.entry import STAGES, available_options, packaged_config_dir

PACKAGE = Path(soup_exp.__file__).parent

# (file name, key) of fallbacks that are not a config's: why each may stay.
NOT_CONFIG_FALLBACKS = {
    ("entry.py", "check_data"): "shared by every stage; only evaluate defines check_data",
    ("backbones.py", "quick_gelu"): "open_clip's pretrained-tag record, not a config",
    ("pipeline.py", "_target_"): "Hydra's launcher node",
    ("analysis_figures.py", "name"): "result rows",
    ("synthetic.py", "per_class"): "the demo's data, moving out of the runtime (issue 20 item 5)",
    ("synthetic.py", "pretrain_per_class"): "the demo's data, moving out of the runtime (issue 20 item 5)",
}


def config_keys() -> set[str]:
    """Every key of every stage's config, alone and under each experiment overlay."""
    keys: set[str] = set()

    def walk(node: DictConfig) -> None:
        for key in node:
            keys.add(str(key))
            child = node._get_node(key)
            if isinstance(child, DictConfig) and not child._is_missing() and not child._is_none():
                walk(child)

    with initialize_config_dir(config_dir=str(packaged_config_dir()), version_base="1.3"):
        for stage in STAGES:
            for experiment in [None, *available_options("experiment")]:
                walk(compose(config_name=stage, overrides=[] if experiment is None else [f"experiment={experiment}"]))
    return keys


def fallbacks(path: Path) -> list[tuple[int, str]]:
    """``(line, key)`` of each ``x.get("key", default)`` whose default is not None."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get"
                and len(node.args) == 2 and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
                and not (isinstance(node.args[1], ast.Constant) and node.args[1].value is None)):
            found.append((node.lineno, node.args[0].value))
    return found


def test_no_fallback_repeats_a_key_the_yaml_defines():
    keys = config_keys()
    assert {"num_workers", "per_class", "border_crop", "seed"} <= keys  # the scan sees the config tree
    found = [f"{path.relative_to(PACKAGE.parent)}:{line}: .get({key!r}, ...)"
             for path in sorted(PACKAGE.rglob("*.py")) for line, key in fallbacks(path)
             if key in keys and (path.name, key) not in NOT_CONFIG_FALLBACKS]
    assert not found, "read these keys directly (the YAML holds their default):\n" + "\n".join(found)


def test_the_scan_finds_a_fallback(tmp_path):
    source = tmp_path / "m.py"
    source.write_text('workers = cfg.get("num_workers", 0)\nroot = cfg.get("root")\nx = d.get("k", None)\n')
    assert fallbacks(source) == [(1, "num_workers")]
