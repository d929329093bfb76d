"""Commands about the installation itself: ``doctor`` and ``cache list|clear``."""

from __future__ import annotations

import json
import os
import platform
import re
import time
from importlib import metadata
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from transferkit.backbones import registered_backbones
from transferkit.cli.app import Json, app, emit_json, out
from transferkit.demos import DEMO_SOURCES
from transferkit.extras import install_line, installed
from transferkit.ownership import LOCK, MARKER, clear_owned, owned_kind
from transferkit.paths import VERDICTS, default_cache_dir
from transferkit.strategies import registered_strategies
from transferkit.version import __version__

_PEFT = ", ".join(s.name for s in registered_strategies() if "peft" in s.requires)  # lora
# (distribution, what it enables, the install command when it is missing)
PACKAGES = (
    ("torch", "training", "pip install -e ."), ("torchvision", "image transforms", "pip install -e ."),
    ("timm", "image backbones", "pip install -e ."), ("scikit-learn", "linear probes, metrics", "pip install -e ."),
    ("transformers", "text encoders", install_line("text")), ("peft", _PEFT, install_line("text")),
    ("soundfile", "audio decoding", install_line("audio")),
    ("soxr", "audio resampling", install_line("audio")),
    ("flwr", "federated", install_line("federated")),
)  # fmt: skip

cache_app = typer.Typer(help="See and free the feature cache.", no_args_is_help=True)
app.add_typer(cache_app, name="cache")


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else 0


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


def _hardware() -> dict[str, Any]:
    import torch  # the one command here that needs it: thread count and CUDA devices

    devices = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            devices.append({"name": props.name, "memory_gib": round(props.total_memory / 2**30, 1)})
    return {"cpu_cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "cuda_devices": devices}


def _demo(name: str, command: str, available: bool, install: str) -> dict[str, Any]:
    return {"demo": name, "command": command, "installed": available, "fix": None if available else install}


def diagnose() -> dict[str, Any]:
    """What ``doctor`` reports, as data: versions, hardware, cache, offline weights, demos."""
    cache = default_cache_dir()
    weights = []
    for spec in registered_backbones():
        if spec.requires is None:
            continue
        module, install = spec.requires
        ok = installed(module)
        weights.append({"backbone": spec.name, "installed": ok, "fix": None if ok else install})
    return {
        "transferkit": __version__, "python": platform.python_version(), "platform": platform.platform(),
        "packages": [
            {"package": name, "version": _version(name), "for": what, "fix": None if _version(name) else fix}
            for name, what, fix in PACKAGES
        ],
        **_hardware(),
        "cache": {"folder": str(cache), "bytes": _size(cache)},
        "offline_weights": weights,
        "demos": [_demo(d.name, d.command, d.available(), d.install) for d in DEMO_SOURCES],
    }  # fmt: skip


@app.command()
def doctor(as_json: Json = False) -> None:
    """Versions, CPU and GPUs, the cache, which offline weights and demos are installed, and fixes."""
    report = diagnose()
    if as_json:
        emit_json(report)
        return
    out.print(f"transferkit {report['transferkit']} · Python {report['python']} · {report['platform']}")
    gpus = ", ".join(f"{d['name']} ({d['memory_gib']} GiB)" for d in report["cuda_devices"]) or "none (CPU only)"
    out.print(f"CPU cores {report['cpu_cores']}, torch threads {report['torch_threads']}; CUDA devices: {gpus}")
    out.print(
        f"cache {report['cache']['folder']}: {_mib(report['cache']['bytes'])} (transferkit cache clear)", markup=False
    )
    table = Table("package / weights / demo", "status", "fix", title="installed pieces")
    for p in report["packages"]:
        table.add_row(f"{p['package']} ({p['for']})", p["version"] or "missing", p["fix"] or "")
    for w in report["offline_weights"]:
        table.add_row(f"{w['backbone']} weights", "installed" if w["installed"] else "missing", w["fix"] or "")
    for d in report["demos"]:
        table.add_row(f"demo: {d['demo']}", "available" if d["installed"] else "missing", d["fix"] or "")
    out.print(table)


# The names transferkit gives what it writes in a cache entry of each kind, temporaries included:
# `cache clear` deletes these and no other file, so a file someone added stays with its folder.
_ENTRY_FILES = {
    "feature cache": re.compile(
        r"features(\.[\w-]+\.partial)?\.npy|\.?manifest\.json(\.\w+)?|\.?frozen[-.][\w.-]*onnx(\.data)?"
    ),
    VERDICTS: re.compile(r"\.?(image|audio|text|dicom)\.json(\.\w+)?"),
}
CACHE_KINDS = tuple(_ENTRY_FILES)


def _describe(manifest_file: Path) -> dict[str, Any]:
    """What a feature set holds, from its manifest — read as untrusted: a field of the wrong
    shape shows as '?', never a traceback."""
    try:
        manifest = (
            json.loads(manifest_file.read_text(encoding="utf-8")) if manifest_file.stat().st_size < 1 << 20 else {}
        )
    except (OSError, ValueError, RecursionError):  # nested thousands deep: that entry is '?', the rest listed
        manifest = {}
    manifest = manifest if isinstance(manifest, dict) else {}
    settings: dict[str, Any] = manifest["settings"] if isinstance(manifest.get("settings"), dict) else {}
    shape = manifest.get("shape")
    views = shape[0] if isinstance(shape, list) and shape and isinstance(shape[0], int) else "?"
    kind = "activations below the trained groups" if settings.get("cut") else "features"
    backbone = settings.get("backbone")
    items = manifest.get("images")
    return {
        "what": f"{backbone[:100] if isinstance(backbone, str) else '?'} {kind}, {views} view(s)",
        "items": items if isinstance(items, int) and not isinstance(items, bool) else None,
    }


def cache_entries(cache: Path) -> list[dict[str, Any]]:
    """The feature caches under ``cache`` (one folder per key, with its manifest) and the scan verdicts."""
    entries: list[dict[str, Any]] = []
    for folder in sorted(p for p in cache.iterdir() if p.is_dir()) if cache.is_dir() else []:
        manifest_file = folder / "manifest.json"
        kind = owned_kind(folder)  # None for a link: only the marker makes an entry, never its look
        if kind not in CACHE_KINDS:
            continue  # a folder of the user's in the cache folder: never listed, never deleted
        if kind == VERDICTS:
            entries.append({"key": folder.name, "what": "folder-scan verdicts", "items": None})
        elif folder.name == "frozen-graphs":
            graphs = len(list(folder.glob("frozen-*.onnx")))
            entries.append({"key": folder.name, "what": "ONNX graphs of frozen layers", "items": graphs})
        elif manifest_file.is_file():
            entries.append({"key": folder.name, **_describe(manifest_file)})
        elif any(folder.glob("features*.npy")):
            entries.append({"key": folder.name, "what": "unfinished extraction", "items": None})
        else:
            continue
        entries[-1] |= {"path": str(folder), "bytes": _size(folder), "modified": folder.stat().st_mtime}
    return entries


@cache_app.command("list")
def cache_list(as_json: Json = False) -> None:
    """Every cached feature set: its backbone, items, size and age."""
    cache = default_cache_dir()
    entries = cache_entries(cache)
    if as_json:
        emit_json({"folder": str(cache), "entries": entries, "bytes": sum(e["bytes"] for e in entries)})
        return
    table = Table("key", "what", "items", "size", "modified", title=f"cache {cache}")
    for e in entries:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(e["modified"]))
        table.add_row(e["key"], e["what"], "" if e["items"] is None else f"{e['items']:,}", _mib(e["bytes"]), when)
    out.print(table)
    out.print(f"{len(entries)} entries, {_mib(sum(e['bytes'] for e in entries))}", highlight=False)


@cache_app.command("clear")
def cache_clear(
    key: Annotated[list[str] | None, typer.Argument(help="Keys to remove (see `cache list`) [default: all].")] = None,
) -> None:
    """Delete cached features (they are recomputed when needed). Only transferkit's own entries go."""
    cache = default_cache_dir()
    entries = cache_entries(cache)
    chosen = [e for e in entries if not key or e["key"] in key]
    unknown = sorted(set(key or ()) - {e["key"] for e in entries})
    if unknown:
        from transferkit.errors import TransferkitError

        raise TransferkitError(f"no cache entry {', '.join(unknown)} in {cache}; see `transferkit cache list`")
    freed: list[dict[str, Any]] = []
    kept: list[dict[str, Any]] = []
    theirs: list[dict[str, Any]] = []
    for e in chosen:
        folder = Path(e["path"])
        names = _ENTRY_FILES.get(owned_kind(folder) or "")
        if names is None:  # no longer marked as a cache entry since the listing
            continue
        clear_owned(folder, names)  # checks the marker again: the folder may have changed since
        added = folder.is_dir() and any(not names.fullmatch(p.name) for p in folder.iterdir()
                                        if p.name not in (MARKER, LOCK))  # fmt: skip
        (freed if not folder.exists() else theirs if added else kept).append(e)  # what went, not what was meant to
    out.print(
        f"freed {_mib(sum(e['bytes'] for e in freed))} ({len(freed)} entries) in {cache}", highlight=False, markup=False
    )
    for e in theirs:
        out.print(f"kept {e['path']}: it holds files transferkit did not write", highlight=False, markup=False)
    if kept:
        from transferkit.errors import TransferkitError

        shown = ", ".join(e["key"] for e in kept[:3]) + (", …" if len(kept) > 3 else "")
        raise TransferkitError(f"could not remove {len(kept)} entries ({shown}) in {cache}: is the folder writable?")
