"""MkDocs hook: the option tables on options.md, generated from the configs that own the options.

The same `transferkit.params` descriptions build the command line, so a table here cannot
drift from `--help`.
"""

from __future__ import annotations

import html
from typing import Any

MARKER = "<!-- options -->"


def _table(cls: Any, exclude: tuple[str, ...] = ()) -> str:
    from transferkit.cli.options import option_name
    from transferkit.params import params_of

    rows = ["| option | default | accepts | what it does | declared by |", "|---|---|---|---|---|"]
    for f, p in params_of(cls):
        if f.name in exclude:
            continue
        flag = p.cli or option_name(f.name)
        if "bool" in str(f.type):
            flag = f"{flag} / --no-{f.name.replace('_', '-')}" if not p.cli else flag
        default = ",".join(map(str, f.default)) if isinstance(f.default, tuple) else f.default
        default = "–" if default in (None, "") else f"`{default}`"
        kind = {"tuple[str, ...]": "names", "tuple[float, ...] | None": "numbers"}.get(str(f.type), str(f.type).replace(" | None", ""))
        accepts = " or ".join(c.describe() for c in p.constraints) or kind
        where = "" if p.command_line else " (YAML and Python only)"
        text = html.escape(p.help).replace("|", "\\|")  # "hf:<hub id>" is text, not a tag
        accepts = html.escape(accepts).replace("|", "\\|")
        owner = f.metadata.get("owner", cls.__name__)
        rows.append(f"| `{flag}` | {default} | {accepts} | {text}{where} | `{owner}` |")
    return "\n".join(rows)


def on_page_markdown(markdown: str, page: Any, **kwargs: Any) -> str:
    if MARKER not in markdown:
        return markdown
    from transferkit.auto.config import AutoConfig
    from transferkit.config import FitConfig
    from transferkit.workflows.compare_config import CompareConfig
    from transferkit.workflows.multitask_config import MultiTaskConfig
    from transferkit.workflows.rank_config import RankConfig

    tables = {
        "fit": _table(FitConfig),
        "compare": _table(CompareConfig),
        "rank": _table(RankConfig),
        "auto": _table(AutoConfig),
        "fit-multitask": _table(MultiTaskConfig),
    }
    for name, table in tables.items():
        markdown = markdown.replace(f"<!-- options:{name} -->", table)
    return markdown.replace(MARKER, "")
