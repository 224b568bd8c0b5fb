"""The results vocabulary has one home: ``soup_exp/vocabulary.py``."""

from __future__ import annotations

import ast
from pathlib import Path

import soup_exp
from soup_exp import vocabulary

PACKAGE = Path(soup_exp.__file__).parent
HOME = PACKAGE / "vocabulary.py"


def _docstrings(tree: ast.AST) -> set[int]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def test_the_result_keys_are_written_only_in_their_home():
    spelled = {vocabulary.HELD_OUT, vocabulary.AVG_SHIFTS}
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == HOME:
            continue
        tree = ast.parse(path.read_text())
        skip = _docstrings(tree)
        found += [f"{path.relative_to(PACKAGE)}:{node.lineno}: {node.value!r}" for node in ast.walk(tree)
                  if isinstance(node, ast.Constant) and node.value in spelled and id(node) not in skip]
    assert not found, "use soup_exp.vocabulary instead of the literal:\n" + "\n".join(found)


def test_the_vocabulary_imports_nothing_so_every_layer_may_use_it():
    tree = ast.parse(HOME.read_text())
    imports = [ast.unparse(n) for n in ast.walk(tree) if isinstance(n, ast.Import | ast.ImportFrom)]
    assert imports == ["from __future__ import annotations"]


def test_the_table_columns_are_the_vocabulary_in_the_papers_order():
    from soup_exp.reporting.table import COLUMNS

    assert [key for key, _ in COLUMNS] == [*vocabulary.ACCURACY_KEYS, vocabulary.AVG_SHIFTS]
    assert dict(COLUMNS)[vocabulary.AVG_SHIFTS] == "Avg shifts"
