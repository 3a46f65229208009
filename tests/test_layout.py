"""The package's form, kept by tests: files grouped by stage with imports that only go down the
pipeline, no import circle, small modules and functions, the old import paths still working, and
the lint (unused names, sorted imports) clean."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "jaxicl"
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 80
TOP_LEVEL = {"__init__.py", "api.py", "lm.py", "errors.py", "legacy_imports.py"}
# The stages in pipeline order: a module may import its own stage or an earlier one, never a later one.
STAGES = ("errors", "models", "io", "lm", "api", "data", "runtime", "engine", "analyses", "runner", "report", "studies",
          "cli")


def _modules() -> dict[str, Path]:
    """Dotted name -> file of every module of the package."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that `path` imports anywhere in it (functions included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        found |= {name for name in names if name in modules}
    return found


def _stage(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in STAGES else None


def test_the_top_level_holds_only_the_public_face():
    assert {p.name for p in PACKAGE.glob("*.py")} == TOP_LEVEL
    assert {p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"} == {
        "models", "io", "data", "engine", "runner", "analyses", "runtime", "report", "studies", "cli"
    }  # fmt: skip


def test_imports_only_go_down_the_pipeline():
    modules = _modules()
    upward = []
    for name, path in modules.items():
        here = _stage(name)
        if here is None:  # the package's own __init__ and the old-path aliases
            continue
        for target in _imports(path, modules):
            there = _stage(target)
            if there is not None and STAGES.index(there) > STAGES.index(here):
                upward.append(f"{name} imports {target}")
    assert not upward, upward


def test_no_import_circle():
    modules = _modules()
    graph = {name: _imports(path, modules) - {name} for name, path in modules.items()}
    for name in graph:  # a package's __init__ is imported with each of its submodules: not a circle
        graph[name] = {t for t in graph[name] if not name.startswith(t + ".")}
    state: dict[str, int] = {}
    circles = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                circles.append(trail[trail.index(nxt):] + [nxt] if nxt in trail else [node, nxt])
            elif nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not circles, circles


def test_modules_and_functions_stay_small():
    long_modules, long_functions = [], []
    for path in _modules().values():
        text = path.read_text()
        if len(text.splitlines()) > MAX_MODULE_LINES:
            long_modules.append(f"{path.relative_to(ROOT)}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long_functions.append(f"{path.relative_to(ROOT)}:{node.name}: {lines} lines")
    assert not long_modules and not long_functions, long_modules + long_functions


@pytest.mark.parametrize(
    "old, new",
    [("jaxicl.experiment", "jaxicl.runner"), ("jaxicl.icl", "jaxicl.engine.scoring"),
     ("jaxicl.metrics", "jaxicl.engine.metrics"), ("jaxicl.tune", "jaxicl.runner.tune"),
     ("jaxicl.revisions", "jaxicl.runner.checkpoints"), ("jaxicl.distributed", "jaxicl.runtime.distributed"),
     ("jaxicl.sharding", "jaxicl.runtime.sharding")],
)  # fmt: skip
def test_old_import_paths_are_the_new_modules_with_a_warning(old, new):
    sys.modules.pop(old, None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = importlib.import_module(old)
    assert module is importlib.import_module(new)
    assert any(issubclass(w.category, DeprecationWarning) and new in str(w.message) for w in caught)


def test_the_public_names_need_no_new_path():
    import jaxicl
    from jaxicl import finetune as F
    from jaxicl import transforms as T
    from jaxicl.experiment import RunConfig, run  # noqa: F401  (an old path, still importable)

    assert F.finetune is importlib.import_module("jaxicl.engine.finetune").finetune
    assert T.kv_mask is importlib.import_module("jaxicl.engine.transforms").kv_mask
    assert jaxicl.finetune is F and callable(jaxicl.load) and callable(jaxicl.forward)
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        jaxicl.nothing_here  # noqa: B018


def test_the_command_runs_as_a_module():
    out = subprocess.run([sys.executable, "-m", "jaxicl.cli", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0
    for command in ("probs", "eval", "run", "tune", "models", "report"):
        assert command in out.stdout


def test_lint_is_clean():
    """Unused or undefined names and unsorted imports (pyproject.toml's [tool.ruff])."""
    out = subprocess.run([sys.executable, "-m", "ruff", "check", "jaxicl", "experiments", "tests"],
                         capture_output=True, text=True, cwd=ROOT)  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:]
