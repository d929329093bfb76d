"""``transferkit layers NAME`` without building NAME: the offline zoo's layer tables, stored.

Listing a backbone's layers means building it, which means loading torch and timm (seconds).
For the registered offline backbones the listing is a fact of their architecture, so it is
stored here (``layer_tables.json``, written by ``python -m transferkit.cli.layer_tables``) with
the timm and transformers versions it was made with; another version, or any other name,
builds the model as before. A test rebuilds every stored table and compares.
"""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path
from typing import Any

TABLES_FILE = Path(__file__).with_name("layer_tables.json")
VERSIONED = ("timm", "transformers")  # the libraries whose model code decides the layers


def _versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for package in VERSIONED:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = None
    return found


def stored(name: str) -> dict[str, Any] | None:
    """The stored table of ``name`` when it was made with the installed library versions."""
    try:
        tables = json.loads(TABLES_FILE.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if tables.get("versions") != _versions():
        return None
    table = tables.get("backbones", {}).get(name)
    return table if isinstance(table, dict) else None


def describe(backbone: Any) -> dict[str, Any]:
    """A built backbone's layers and groups as plain data (what ``layers`` prints)."""
    from dataclasses import asdict

    from transferkit.layers import layer_groups, list_layers

    groups = layer_groups(backbone)
    return {
        "layers": [asdict(row) for row in list_layers(backbone)],
        "groups": [{"index": g.index, "label": g.label, "num_params": g.num_params} for g in groups],
    }


def main() -> None:
    """Rebuild ``layer_tables.json`` from every registered offline backbone."""
    from transferkit.backbones import create_backbone, registered_backbones

    names = [s.name for s in registered_backbones() if s.requires is not None or s.name.endswith(".random")]
    tables = {name: describe(create_backbone(name, pretrained=False)) for name in names}
    TABLES_FILE.write_text(json.dumps({"versions": _versions(), "backbones": tables}, indent=1) + "\n")
    print(f"wrote {len(tables)} tables to {TABLES_FILE}")


if __name__ == "__main__":
    import transferkit.config  # noqa: F401  (registers the modalities and their backbones)

    main()
