"""The architecture, checked: import layers and no cycles (import-linter), size limits, and
no shared code that asks which modality it runs."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from transferkit.modalities import modality_names
from transferkit.strategies import registered_strategies

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "src" / "transferkit"
MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 80


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_import_contracts_hold() -> None:
    """cli → workflows → reports → api → pipeline → engine → modalities → registries, no cycles."""
    command = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    if command is None:
        pytest.fail("lint-imports is missing: pip install -e '.[test]'")
    done = subprocess.run([command, "--no-cache"], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_modules_and_functions_stay_small(path: Path) -> None:
    source = path.read_text(encoding="utf-8")
    assert len(source.splitlines()) <= MAX_MODULE_LINES, f"{path.name}: split it by concept"
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            length = (node.end_lineno or node.lineno) - node.lineno + 1
            assert length <= MAX_FUNCTION_LINES, f"{path.name}:{node.lineno} {node.name} has {length} lines"


def _names_a_modality(node: ast.AST, names: set[str]) -> bool:
    return isinstance(node, ast.Constant) and node.value in names


@pytest.mark.parametrize(
    "path",
    [p for p in _modules() if "modalities" not in p.relative_to(PACKAGE).parts],
    ids=lambda p: str(p.relative_to(PACKAGE)),
)
def test_shared_code_never_branches_on_a_modality_name(path: Path) -> None:
    """Outside ``modalities/``, code asks the modality object; it never compares its name."""
    names = set(modality_names())
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            assert not any(_names_a_modality(s, names) for s in sides), f"{path.name}:{node.lineno}"
            for side in sides:  # `x in ("image", "text")`
                if isinstance(side, ast.Tuple | ast.List | ast.Set):
                    assert not any(_names_a_modality(e, names) for e in side.elts), f"{path.name}:{node.lineno}"


def _docstrings(tree: ast.AST) -> set[int]:
    """The ids of the docstring constants (prose may name a strategy)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


@pytest.mark.parametrize(
    "path", [p for p in _modules() if p.name != "strategies.py"], ids=lambda p: str(p.relative_to(PACKAGE))
)
def test_no_code_outside_strategies_names_a_strategy(path: Path) -> None:
    """A strategy answers for itself (`compared`, `federates`, `searched`, `role`, `rules`,
    `adapt`, …): code elsewhere asks the object, so a new strategy is one `register_strategy`.
    Not only comparisons: a tuple of names or a default spelled out is the same branch, later."""
    names = {s.name for s in registered_strategies()}
    tree = ast.parse(path.read_text(encoding="utf-8"))
    prose = _docstrings(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and node.value in names and id(node) not in prose:
            pytest.fail(f"{path.name}:{node.lineno} names the strategy {node.value!r}; ask the Strategy object")


def _hub_file_names(tree: ast.AST) -> set[int]:
    """``filename="config.json"`` asks the Hugging Face cache for the hub's file, not ours."""
    return {id(k.value) for n in ast.walk(tree) if isinstance(n, ast.Call) for k in n.keywords if k.arg == "filename"}


@pytest.mark.parametrize(
    "path", [p for p in _modules() if p.name != "runfolder.py"], ids=lambda p: str(p.relative_to(PACKAGE))
)
def test_only_the_run_folder_names_its_files(path: Path) -> None:
    """A run folder's file names live in ``RunFolder``; a module that spells one out would drift
    from what is claimed, cleared and sealed (as ``api.WRITTEN`` and ``ownership.RUN_FILES`` once did)."""
    from transferkit.runfolder import RunFolder

    names = {v for k, v in vars(RunFolder).items() if k.isupper() and isinstance(v, str) and "." in v}
    tree = ast.parse(path.read_text(encoding="utf-8"))
    exempt = _docstrings(tree) | _hub_file_names(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and node.value in names and id(node) not in exempt:
            pytest.fail(f"{path.name}:{node.lineno} spells the run file {node.value!r}; ask RunFolder")


def _asks_a_capability_by_string(node: ast.AST) -> bool:
    """``m.attribution == "cam"`` or ``"image_size" in m.input_options``: a name standing in for
    what the object should answer (an explainer's methods, the modality's input side)."""
    if not isinstance(node, ast.Compare):
        return False
    sides = [node.left, *node.comparators]
    named = any(isinstance(s, ast.Attribute) and s.attr in ("attribution", "input_options") for s in sides)
    return named and any(isinstance(s, ast.Constant) and isinstance(s.value, str) for s in sides)


@pytest.mark.parametrize(
    "path", [p for p in _modules() if "modalities" not in p.relative_to(PACKAGE).parts],
    ids=lambda p: str(p.relative_to(PACKAGE)),
)  # fmt: skip
def test_capabilities_are_asked_of_objects_not_names(path: Path) -> None:
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        assert not _asks_a_capability_by_string(node), f"{path.name}:{getattr(node, 'lineno', '?')}"
