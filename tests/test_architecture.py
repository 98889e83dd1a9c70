"""The house rules of docs/architecture.md, checked on the code itself: imports point down the layers (the
import-linter contract in pyproject.toml), short functions, lazy imports only with a reason, math tests free of TRL,
and no helper written twice."""

from __future__ import annotations

import ast
import hashlib
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
MODULES = sorted((REPO / "align").rglob("*.py"))
MAX_FUNCTION_LINES = 60


def functions(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def test_imports_point_down_the_layers():
    lint = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")
    result = subprocess.run([lint, "--config", str(REPO / "pyproject.toml")], cwd=REPO, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


def test_no_function_is_longer_than_60_lines():
    long = [f"{path.relative_to(REPO)}:{fn.lineno} {fn.name} ({fn.end_lineno - fn.lineno + 1} lines)"
            for path in MODULES for fn in functions(path) if fn.end_lineno - fn.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, "split these: " + "; ".join(long)


def _explained(lines: list[str], lineno: int) -> bool:
    """Whether the import on line `lineno` (1-based) carries a comment: on its line, or right above the block of
    imports it belongs to (blank lines inside the block allowed)."""
    if "#" in lines[lineno - 1]:
        return True
    for line in reversed(lines[:lineno - 1]):
        stripped = line.strip()
        if stripped.startswith("#"):
            return True
        if stripped and not stripped.startswith(("import ", "from ")):
            return False
    return False


def test_an_import_inside_a_function_says_why():
    """Module-level imports, except for an optional dependency or start-up time, with a comment saying which."""
    silent = []
    for path in MODULES:
        lines = path.read_text().splitlines()
        for fn in functions(path):
            for node in ast.walk(fn):
                if isinstance(node, (ast.Import, ast.ImportFrom)) and not _explained(lines, node.lineno):
                    silent.append(f"{path.relative_to(REPO)}:{node.lineno} {lines[node.lineno - 1].strip()}")
    assert not silent, "move to the top or say why it is lazy: " + "; ".join(silent)


def test_the_math_tests_import_no_trl():
    math_tests = sorted(p.stem for p in (REPO / "tests" / "methods").glob("test_*_math.py")) + ["test_sage_schedule"]
    assert len(math_tests) >= 4
    code = ("import sys; " + "; ".join(f"import tests.methods.{name}" for name in math_tests) +
            "; print(sorted(m for m in ('trl', 'transformers', 'accelerate', 'datasets') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"


def _body_digest(fn: ast.FunctionDef) -> str:
    body = fn.body[1:] if fn.body and isinstance(fn.body[0], ast.Expr) and \
        isinstance(getattr(fn.body[0], "value", None), ast.Constant) else fn.body  # the docstring may differ
    return hashlib.sha256("".join(ast.dump(stmt) for stmt in body).encode()).hexdigest()


def test_no_helper_is_written_twice():
    """Two functions with the same statements are one helper too many (a second copy of a helper is a bug)."""
    copies = defaultdict(list)
    for path in MODULES:
        for fn in functions(path):
            statements = sum(1 for node in ast.walk(fn) if isinstance(node, ast.stmt)) - 1
            if statements >= 3:
                copies[_body_digest(fn)].append(f"{path.relative_to(REPO)}:{fn.lineno} {fn.name}")
    twice = [places for places in copies.values() if len(places) > 1]
    assert not twice, twice


@pytest.mark.parametrize("module", ["align.train", "align.compose", "align.methods"])
def test_config_errors_come_before_heavy_imports(module):
    """The entry point and the method registry import neither torch nor TRL: a config error prints in seconds."""
    code = (f"import sys, {module}; print(sorted(m for m in ('torch', 'transformers', 'trl', 'datasets', "
            f"'accelerate') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.stdout.strip() == "[]", result.stdout + result.stderr[-2000:]
