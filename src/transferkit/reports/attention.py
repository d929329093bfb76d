"""The report's "where each strategy looks" section: one row per picked validation image, one
column per strategy, each cell that strategy's Grad-CAM for the class it predicted.

``results.json`` may have been edited, so every field is checked for its type and escaped,
the overlays are read only from ``OUT/attention/`` under names made from positions, and each
row's image only from the thumbnail ``compare`` stored (:mod:`.previews`), all inside ``OUT``.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

from transferkit.explain.attention import FOLDER, MAX_COLUMNS, cell_name
from transferkit.modalities import Modality
from transferkit.reports.previews import stored_preview
from transferkit.schema import SchemaError, inside

MAX_ROWS = 16  # an edited file cannot make the page draw more than this


def _cell(folder: Path, row: int, column: int, cell: Any, truth: str) -> str:
    try:  # attention/ or the file may be a link out of the folder: someone else's file, never read
        path = inside(folder, f"{FOLDER}/{cell_name(row, column)}")
    except SchemaError:
        return "<td>–</td>"
    if not isinstance(cell, dict) or not path.is_file():
        return "<td>–</td>"
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    predicted, confidence = str(cell.get("predicted", "?")), cell.get("confidence")
    score = f" {confidence:.2f}" if isinstance(confidence, int | float) else ""
    mark = "ok" if predicted == truth else "wrong"
    return (
        f'<td><img alt="overlay" src="data:image/png;base64,{data}">'
        f'<br><span class="{mark}">{html.escape(predicted)}{score}</span></td>'
    )


def _listed(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def attention_section(attention: Any, folder: Path | None, modality: Modality) -> str:
    """The section's HTML ("" where the comparison has none, e.g. text and audio)."""
    if not isinstance(attention, dict) or folder is None:
        return ""
    if "note" in attention:
        return f'<h2>Where each strategy looks</h2><p id="attention">{html.escape(str(attention["note"]))}</p>'
    # cut before anything is made of them: an edited file's million columns are never each turned to text
    columns = [str(c) for c in _listed(attention.get("columns"))[:MAX_COLUMNS]]
    rows = [r for r in _listed(attention.get("rows"))[:MAX_ROWS] if isinstance(r, dict)]
    if not columns or not rows:
        return ""
    head = "<th>image</th>" + "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = []
    for r, row in enumerate(rows):
        item, truth = str(row.get("item", "")), str(row.get("truth", ""))
        kind = "most confident error" if row.get("kind") == "error" else "correct"
        preview = stored_preview(folder, item, modality)
        given = row.get("cells")
        cells: list[Any] = given if isinstance(given, list) else []
        drawn = "".join(_cell(folder, r, c, cells[c] if c < len(cells) else None, truth) for c in range(len(columns)))
        body.append(f"<tr><td>{preview}<br>true <b>{html.escape(truth)}</b><br><small>{kind}</small></td>{drawn}</tr>")
    seed = attention.get("seed")
    return f"""<h2>Where each strategy looks</h2>
<p>Grad-CAM of each strategy's model (seed {html.escape(str(seed))} where it ran) for the class it predicted, on the
recommended run's most confident errors and most confident correct images; red: a wrong prediction. Where the
frozen strategies and the fine-tuned ones light up different places, fine-tuning moved the attention.</p>
<table id="attention"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>"""


STYLE = """#attention td{text-align:center;font-size:12px;vertical-align:top}#attention img{width:112px}
#attention td:first-child img{width:96px;image-rendering:pixelated}.wrong{color:#b00020;font-weight:600}
"""

__all__ = ["STYLE", "attention_section"]
