"""``auto``'s report: the decision trail as a plot and a table, then the shipped model's
confusion matrix and worst errors on the held-out items. Built from ``auto.json`` and the
thumbnails stored beside it (:mod:`.previews`): no file that ``auto.json`` names is opened."""

from __future__ import annotations

import html
from collections.abc import Collection
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt

from transferkit.errors import TransferkitError
from transferkit.modalities import get_modality
from transferkit.ownership import resealed
from transferkit.paths import atomic_write_text
from transferkit.records import Predictions
from transferkit.reports.html import MOST_CONFUSED, STYLE, _img, _png, most_confused, plot_confusion
from transferkit.reports.previews import confused, store_previews
from transferkit.schema import inside, read_json_object

_COLOURS = {"promoted": "tab:blue", "dropped": "tab:grey", "finished": "tab:green", "final": "tab:red",
            "stopped by the budget": "tab:orange"}  # fmt: skip


def plot_trail(entries: list[dict[str, Any]], chosen: str | None, budget: float) -> str:
    """Each run's validation accuracy (95% interval) at the budget second it ended."""
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for e in entries:
        if e["accuracy"] is None or e["end"] is None:
            continue
        colour = "tab:red" if e["run_dir"] == chosen else _COLOURS.get(e["status"], "tab:grey")
        yerr = [[max(0.0, e["accuracy"] - e["low"])], [max(0.0, e["high"] - e["accuracy"])]]
        ax.errorbar(e["end"], e["accuracy"], yerr=yerr, fmt="o", color=colour, capsize=3, ms=5)
        ax.annotate(f"{e['stage']}: {e['label'].split(' · ', 1)[-1]}", (e["end"], e["accuracy"]), fontsize=7,
                    textcoords="offset points", xytext=(5, 3))  # fmt: skip
    ax.axvline(budget, color="black", lw=1, ls="--")
    ax.annotate("budget", (budget, ax.get_ylim()[0]), fontsize=8, rotation=90, va="bottom", ha="right")
    ax.set_xlabel("seconds of the budget spent when the run ended")
    ax.set_ylabel("validation accuracy (95% interval)")
    ax.set_title("The search: red is the model shipped")
    ax.grid(alpha=0.3)
    return _png(fig)


def _cell(value: Any, digits: int = 3) -> str:
    if value is None:
        return ""
    return f"{value:.{digits}f}" if isinstance(value, float) else html.escape(str(value))


def _trail_table(entries: list[dict[str, Any]]) -> str:
    head = ("stage", "plan", "steps", "predicted s", "actual s", "val acc", "95% CI", "status", "why")
    rows = []
    for e in entries:
        ci = f"{e['low']:.3f}–{e['high']:.3f}" if e["low"] is not None else ""
        cells = (e["stage"], e["label"], e["steps"] or "", _cell(e["predicted"], 0), _cell(e["actual"], 0),
                 _cell(e["accuracy"]), ci, e["status"], e["reason"])  # fmt: skip
        rows.append("<tr>" + "".join(f"<td>{_cell(c)}</td>" for c in cells) + "</tr>")
    return f'<table id="trail"><tr>{"".join(f"<th>{h}</th>" for h in head)}</tr>' + "".join(rows) + "</table>"


def render_auto_report(data: dict[str, Any], folder: Path | None = None) -> str:
    result, settings = data["result"], data["settings"]
    held, classes = result["held_out"], result["classes"]
    entries = data["trail"]
    predictions = Predictions(items=held["items_shown"], y_true=held["y_true"], y_pred=held["y_pred"],
                              confidence=held["confidence"])  # fmt: skip
    budget = float(result["budget_seconds"])
    exports = (
        "".join(
            f"<li>{html.escape(r['format'])}: {html.escape(Path(r['file']).name)}, held-out accuracy "
            f"{_cell(r['accuracy'], 4)}, top-1 agreement {r['agreement']:.2%}</li>"
            for r in result["exports"]
        )
        or "<li>none</li>"
    )
    wise = " + WiSE-FT" if result["wise_ft"] else ""
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>transferkit auto</title>
<style>{STYLE}</style></head><body>
<h1>transferkit auto</h1>
<p>budget {html.escape(settings["budget"])} · spent {result["seconds"]:.0f}s · {len(classes)} classes ·
target {html.escape(settings["target"])} · seed {settings["seed"]}</p>
<div class="box rec" id="result"><b>Shipped:</b> {html.escape(result["label"])}{wise}
— held-out accuracy {held["accuracy"]:.4f} (95% CI {held["low"]:.3f}–{held["high"]:.3f}, {held["items"]} items
no choice saw); validation {result["val_accuracy"]:.4f}.</div>
<h2>Decision trail</h2><div class="plots">
{_img("plot-trail", plot_trail(entries, result.get("run_dir"), budget), "accuracy against time of every run")}
{_img("plot-confusion", plot_confusion(predictions, classes, "Held-out confusion matrix"), "held-out confusion")}
</div>
{_trail_table(entries)}
<h2>Shipped files</h2><ul id="exports">{exports}</ul>
<h2>Worst held-out errors</h2>
<div id="most-confused">{most_confused(predictions, classes, get_modality(result["modality"]), folder=folder)}</div>
</body></html>
"""


def write_auto_report(out: str | Path, items: Collection[str] = ()) -> Path:
    """(Re)build ``out/report.html`` from ``out/auto.json``; ``items``: the held-out items the
    search just scored (from the user's data), whose worst errors get thumbnails first."""
    out = Path(out)
    try:
        data = read_json_object(inside(out, "auto.json"))  # bounded in size and depth before it is parsed
        if items:
            _store_previews(data, out, set(items))
        page = render_auto_report(data, out)
    except (OSError, KeyError, TypeError, ValueError, IndexError, AttributeError, RecursionError) as exc:
        raise TransferkitError(f"{out / 'auto.json'} is not a finished search transferkit wrote ({exc!r})") from exc
    with resealed(out, replacing=["report.html"]):  # a user's file of that name is refused, never replaced
        atomic_write_text(out / "report.html", page)
    return out / "report.html"


def _store_previews(data: dict[str, Any], out: Path, items: set[str]) -> None:
    held = data["result"]["held_out"]
    predictions = Predictions(items=held["items_shown"], y_true=held["y_true"], y_pred=held["y_pred"],
                              confidence=held["confidence"])  # fmt: skip
    shown = [predictions.items[i] for i in confused(predictions, MOST_CONFUSED)]
    store_previews(out, shown, get_modality(data["result"]["modality"]), items)
