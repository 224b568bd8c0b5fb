"""Every module imports on its own, and the project's imports form no cycle: those inside
functions too, which would otherwise hide one."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import soup_exp

PACKAGE = Path(soup_exp.__file__).parent


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def project_imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Project modules ``name`` imports anywhere: at module level and inside functions
    (``if TYPE_CHECKING:`` blocks excluded: they never run)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(statements: list[ast.stmt]) -> None:
        for node in statements:
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parent + ([base] if base else []))
                found.add(base)
                found.update(f"{base}.{alias.name}" for alias in node.names)
            elif isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                visit(node.orelse)
            else:
                visit([child for child in ast.iter_child_nodes(node) if isinstance(child, ast.stmt)])

    visit(ast.parse(path.read_text()).body)
    return {m for m in found if m in known and m != name}


def test_imports_have_no_cycle():
    mods = modules()
    graph = {name: project_imports(name, path, set(mods)) for name, path in mods.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1 and not node.startswith(dep + "."):  # a package importing its own parent is fine
                cycle = stack[stack.index(dep):] + [dep]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep)
        stack.pop()
        state[node] = 2

    for name in graph:
        if name not in state:
            visit(name)


def test_every_module_imports_on_its_own():
    """Each module imported first, in a fresh copy of the package (third-party libraries
    stay loaded between modules to keep this fast)."""
    script = """
import importlib, sys
for name in sys.argv[1:]:
    for loaded in [m for m in sys.modules if m == "soup_exp" or m.startswith("soup_exp.")]:
        del sys.modules[loaded]
    importlib.import_module(name)
"""
    result = subprocess.run([sys.executable, "-c", script, *modules()], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]


def test_utils_depend_on_nothing_above_them():
    """``soup_exp.utils`` is the bottom layer: any module may use it, and it uses only itself
    and the modules that import nothing (errors, vocabulary)."""
    mods = modules()
    bottom = {"soup_exp", "soup_exp.errors", "soup_exp.vocabulary"}
    for name, path in mods.items():
        if name.startswith("soup_exp.utils"):
            above = {m for m in project_imports(name, path, set(mods))
                     if m not in bottom and not m.startswith("soup_exp.utils")}
            assert not above, f"{name} imports {sorted(above)}"
