"""The package's shape, checked: imports run one way (import-linter's contracts in pyproject.toml, run by
`make test` too), no two modules import each other even through others, and no module takes another
module's private (``_name``) names."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO

PACKAGE = REPO / "src" / "lmforge"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_the_import_contracts_hold():
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("import-linter is not installed (pip install -e '.[test]')")
    p = subprocess.run([exe], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-2000:]


def test_no_import_cycles_between_modules():
    """Not even through a function-level import: a cycle is two modules that cannot be read apart."""
    grimp = pytest.importorskip("grimp")
    graph = grimp.build_graph("lmforge")
    cycles = sorted({tuple(sorted((m, n))) for m in graph.modules for n in graph.find_modules_directly_imported_by(m)
                     if m != n and graph.find_shortest_chain(importer=n, imported=m)})
    assert not cycles, "modules that import each other (directly or through others): " + ", ".join(" <-> ".join(c) for c in cycles)


def test_no_module_imports_another_modules_private_names():
    offences = []
    for path in sorted(PACKAGE.rglob("*.py")):
        here = module_name(path)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lmforge") and node.module != here:
                offences += [f"{here}: from {node.module} import {a.name}" for a in node.names
                             if a.name.startswith("_") and not a.name.startswith("__")]
    assert not offences, "\n".join(offences)


MAX_FUNCTION_LINES = 80  # issue 15, item 5: longer only with the reason in the docstring ("Long because ...")


def test_no_function_is_long_without_a_stated_reason():
    long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES and "Long because" not in (ast.get_docstring(node) or ""):
                    long.append(f"{module_name(path)}.{node.name}: {lines} lines")
    assert not long, "functions over ~80 lines (split them, or say why in the docstring):\n" + "\n".join(long)
