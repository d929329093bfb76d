"""The comparison report: one self-contained ``report.html`` (plots inlined, no external assets).

Built from ``results.json`` and the files ``compare`` stored beside it (overlays in ``attention/``,
thumbnails in ``previews/``), so ``transferkit report DIR`` can rebuild it any time; every file it
reads is checked to lie inside DIR (:func:`transferkit.schema.inside`), never one a stored value names.
"""

from __future__ import annotations

import base64
import html
import io
from collections import Counter
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display: render to PNG bytes only
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter, ScalarFormatter

from transferkit.errors import TransferkitError
from transferkit.metrics import accuracy_text
from transferkit.modalities import Modality, get_modality
from transferkit.ownership import resealed
from transferkit.paths import atomic_write_text
from transferkit.records import Predictions, RunKey, RunRecord
from transferkit.reports.attention import STYLE as ATTENTION_STYLE
from transferkit.reports.attention import attention_section
from transferkit.reports.previews import confused, stored_preview
from transferkit.reports.stored import check_comparison
from transferkit.schema import inside, read_json_object

MOST_CONFUSED = 8
MAX_DRAWN = 40  # classes a confusion plot shows: more are unreadable at any size the page has


def _png(fig: Figure) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _img(plot_id: str, data: str, alt: str) -> str:
    return f'<img id="{plot_id}" alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _label(row: dict[str, Any], multi: bool) -> str:
    return f"{row['backbone']} · {row['strategy']}" if multi else str(row["strategy"])


def plot_accuracy_vs_time(rows: list[dict[str, Any]], multi: bool) -> str:
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for r in rows:
        ax.errorbar(r["train_seconds"], r["val_accuracy_mean"], yerr=r["val_accuracy_std"], fmt="o", capsize=4)
        ax.annotate(
            _label(r, multi),
            (r["train_seconds"], r["val_accuracy_mean"]),
            textcoords="offset points",
            xytext=(6, 4),
            fontsize=8,
        )
    times = [r["train_seconds"] for r in rows]
    if max(times) > 5 * min(times):
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(ScalarFormatter())  # "10", "100": not "10^1" and crowded minor labels
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("training time per run (s)")
    ax.set_ylabel("validation accuracy (mean ± sd over seeds)")
    ax.set_title("Accuracy vs training time")
    ax.grid(alpha=0.3)
    return _png(fig)


def plot_learning_curves(records: list[RunRecord], multi: bool) -> str:
    fig, ax = plt.subplots(figsize=(6.5, 4))
    first_seed = min(r.seed for r in records)
    for r in records:
        if r.seed != first_seed:
            continue
        label = _label({"backbone": r.backbone, "strategy": r.strategy}, multi)
        if r.history:
            epochs = [h["epoch"] for h in r.history]
            ax.plot(epochs, [h["val_accuracy"] for h in r.history], marker="o", ms=3, label=label)
        else:  # closed-form linear probe: one point, drawn as a line across the budget
            ax.axhline(r.val["accuracy"], ls="--", lw=1, color="grey")
            ax.annotate(f"{label} ({r.val['accuracy']:.3f})", (1, r.val["accuracy"]), fontsize=8, color="grey")
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy")
    ax.set_title(f"Learning curves (seed {first_seed})")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    return _png(fig)


def drawn_classes(predictions: Predictions, classes: int, n: int = MAX_DRAWN) -> list[int]:
    """The classes a confusion plot shows: every one of up to ``n`` classes; of more, those the
    run's items were or were predicted as (another is an empty row and column), at most ``n``,
    the most involved in errors first. Its size follows the items, never the class count alone."""
    if classes <= n:
        return list(range(classes))
    count: Counter[int] = Counter(predictions.y_true) + Counter(predictions.y_pred)
    errors: Counter[int] = Counter()
    for t, p in zip(predictions.y_true, predictions.y_pred, strict=True):
        if t != p:
            errors.update((t, p))
    return sorted(sorted(count, key=lambda c: (-errors[c], -count[c], c))[:n])


def plot_confusion(predictions: Predictions, classes: list[str], title: str) -> str:
    shown = drawn_classes(predictions, len(classes))
    if len(shown) < len(classes):
        title += f" ({len(shown)} of {len(classes):,} classes: those in the most errors)"
    position = {c: i for i, c in enumerate(shown)}
    k = len(shown)
    matrix = np.zeros((k, k), dtype=int)
    for t, p in zip(predictions.y_true, predictions.y_pred, strict=True):
        if t in position and p in position:
            matrix[position[t], position[p]] += 1
    names = [classes[c] for c in shown]
    side = min(9.0, 2.5 + 0.45 * k)
    fig, ax = plt.subplots(figsize=(side, side))
    ax.imshow(matrix, cmap="Blues")
    for i in range(k):
        for j in range(k):
            if matrix[i, j]:
                ax.text(
                    j,
                    i,
                    str(matrix[i, j]),
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if matrix[i, j] > matrix.max() / 2 else "black",
                )
    ax.set_xticks(range(k), names, rotation=45, ha="right")
    ax.set_yticks(range(k), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    return _png(fig)


def plot_memory(rows: list[dict[str, Any]], estimates: dict[str, list[dict[str, Any]]], multi: bool) -> str:
    """Estimated bytes per part (largest phase) beside the measured peak of the whole process."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    parts = ["weights", "gradients", "optimizer", "activations"]
    labels = [_label(r, multi) for r in rows]
    bottoms = np.zeros(len(rows))
    for part in parts:
        values = []
        for r in rows:
            phases = estimates.get(RunKey(r["backbone"], r["strategy"]).id, [])
            largest = max(phases, key=lambda e: e["total"]) if phases else {part: 0}
            values.append(largest[part] / 2**20)
        ax.bar(labels, values, bottom=bottoms, label=f"estimated {part}")
        bottoms += np.array(values)
    # The process peak includes the framework itself; its growth during the run is comparable.
    ax.plot(labels, [r["memory_growth_bytes"] / 2**20 for r in rows], "kD", label="measured growth during the run")
    ax.set_ylabel("MiB")
    ax.set_title("Memory: estimate before training vs measured peak")
    ax.tick_params(axis="x", rotation=30)
    ax.legend(fontsize=7)
    return _png(fig)


def most_confused(
    pred: Predictions, classes: list[str], modality: Modality, n: int = MOST_CONFUSED, folder: Path | None = None
) -> str:
    """Misclassified items the model was most sure about, previewed from the thumbnails stored
    in ``folder`` (the items' own files are never opened here: :mod:`.previews`)."""
    cells = []
    for i in confused(pred, n):
        picture = stored_preview(folder, pred.items[i], modality)
        truth, guess = html.escape(classes[pred.y_true[i]]), html.escape(classes[pred.y_pred[i]])
        caption = f"true <b>{truth}</b>, predicted <b>{guess}</b> ({pred.confidence[i]:.2f})"
        cells.append(f'<figure class="confused">{picture}<figcaption>{caption}</figcaption></figure>')
    if not cells:
        return "<p>No item was misclassified.</p>"
    return '<div class="gallery">' + "".join(cells) + "</div>"


def _accuracy(r: dict[str, Any]) -> str:
    """Mean ± sd over seeds (or '1 seed'), and the 95% Wilson interval over every validation item."""
    interval = (
        f"<br><small>95% CI {r['val_accuracy_low']:.3f}–{r['val_accuracy_high']:.3f}</small>"
        if "val_accuracy_low" in r
        else ""
    )
    return accuracy_text(r, interval=False) + interval


def _table(data: dict[str, Any], multi: bool) -> str:
    head = "".join(
        f"<th>{h}</th>"
        for h in ["strategy", "val accuracy", "val macro-F1", "test accuracy", "time (s)",
                  f"{_modality(data).unit}/s",
                  "trainable params", "frozen params", "peak RSS (MiB)", "growth (MiB)", "estimated (MiB)"]
    )  # fmt: skip
    body = []
    rec = data["recommendation"]
    for r in data["rows"]:
        est = data["memory_estimates"].get(RunKey(r["backbone"], r["strategy"]).id, [])
        test = f"{r['test_accuracy_mean']:.3f} ± {r['test_accuracy_std']:.3f}" if "test_accuracy_mean" in r else "–"
        chosen = ' class="recommended"' if (r["backbone"], r["strategy"]) == (rec["backbone"], rec["strategy"]) else ""
        cells = [
            html.escape(_label(r, multi)),
            _accuracy(r),
            f"{r['val_macro_f1_mean']:.3f} ± {r['val_macro_f1_std']:.3f}",
            test,
            f"{r['train_seconds']:.1f}",
            f"{r['images_per_second']:.0f}",
            f"{r['trainable_params']:,}",
            f"{r['frozen_params']:,}",
            f"{r['peak_memory_bytes'] / 2**20:,.0f}",
            f"{r['memory_growth_bytes'] / 2**20:,.0f}",
            " / ".join(f"{e['phase']} {e['total'] / 2**20:,.0f}" for e in est),
        ]
        body.append(f"<tr{chosen}>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return f'<table id="comparison"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


STYLE = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;font-size:14px}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}
td:first-child,th:first-child{text-align:left}tr.recommended{background:#e6f4ea;font-weight:600}
.box{padding:.6em 1em;border-radius:6px;margin:.6em 0}.rec{background:#e6f4ea}.warn{background:#fff4ce}
.prior{background:#eef3fb}.plots img{max-width:49%;vertical-align:top}.gallery{display:flex;flex-wrap:wrap;gap:10px}
figure.confused{margin:0;width:150px;font-size:12px;text-align:center}figure.confused img{width:96px;image-rendering:pixelated}
"""


def render_report(data: dict[str, Any], folder: Path | None = None) -> str:
    """The page for a comparison's ``results.json``; ``folder`` holds its overlays and thumbnails."""
    rows, classes = data["rows"], data["classes"]
    records = [r for r in map(RunRecord.from_dict, data["records"]) if r is not None]  # the file may be edited
    multi = len({r["backbone"] for r in rows}) > 1
    rec = data["recommendation"]
    runs = [r for r in records if r.key == RunKey(rec["backbone"], rec["strategy"])]
    best_run = max(runs, key=lambda r: r.val["accuracy"])
    cfg = data["config"]
    prior = data["prior"]
    agree = "agrees with" if prior["strategy"] == rec["strategy"] else "differs from"
    shift = prior.get("batchnorm_shift")
    confidence = (
        ""
        if shift is None
        else f" (BatchNorm statistics shift from pre-training {shift:.2f}; below 0.40 counts as similar)"
    )
    warnings = "".join(f'<div class="box warn" id="warning">⚠ {html.escape(w)}</div>' for w in data["warnings"])
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>transferkit comparison</title>
<style>{STYLE}{ATTENTION_STYLE}</style></head><body>
<h1>transferkit comparison</h1>
<p>{len(classes)} classes · backbones: {html.escape(", ".join(cfg["backbones"]))} · budget {cfg["budget_epochs"]} epochs ·
{cfg["seeds"]} seed(s) · {_input_size(cfg["base"], _modality(data))} · batch {cfg["base"]["batch_size"]}</p>
<div class="box rec" id="recommendation"><b>Recommendation:</b> {html.escape(rec["reason"])}</div>
<div class="box prior" id="prior"><b>Rule of thumb:</b> {html.escape(prior["strategy"])} — {html.escape(prior["reason"])}{confidence};
the measurement {agree} it.</div>
{warnings}
<h2>Comparison</h2>{_table(data, multi)}
<p>Memory: the estimate (before training, per phase) counts weights, gradients, AdamW state and activations;
the measured peak is the {html.escape(rows[0]["memory_kind"].replace("_", " "))} during the run, which also holds the
framework and the data pipeline; growth is that peak minus what was in use when the run began.</p>
<h2>Plots</h2><div class="plots">
{_img("plot-accuracy-time", plot_accuracy_vs_time(rows, multi), "accuracy vs training time")}
{_img("plot-learning-curves", plot_learning_curves(records, multi), "learning curves")}
{_img("plot-confusion", plot_confusion(best_run.predictions, classes, _title(best_run)), "confusion matrix of the recommended run")}
{_img("plot-memory", plot_memory(rows, data["memory_estimates"], multi), "memory estimate vs measured")}
</div>
<h2>Most confused validation images ({html.escape(best_run.strategy)}, seed {best_run.seed})</h2>
<div id="most-confused">{most_confused(best_run.predictions, classes, _modality(data), folder=folder)}</div>
{attention_section(data.get("attention"), folder, _modality(data))}
</body></html>
"""


def _title(record: RunRecord) -> str:
    return f"Confusion matrix: {record.strategy}, seed {record.seed}"


def load_comparison(out: str | Path) -> dict[str, Any]:
    """The ``results.json`` that ``compare`` wrote into ``out``."""
    path = inside(Path(out), "results.json")  # a link to another folder's file is not this comparison
    if not path.is_file():
        raise TransferkitError(f"{out} holds no results.json; run `transferkit compare DATA --out {out}` first")
    # bounded, an object, and every field the page reads consistent with the rest, or one line
    return check_comparison(read_json_object(path), str(path))


def write_report(out: str | Path) -> Path:
    """(Re)build ``out/report.html`` from ``out/results.json``."""
    out = Path(out)
    path = out / "report.html"
    try:
        page = render_report(load_comparison(out), out)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:  # an edited results.json
        raise TransferkitError(f"{out / 'results.json'} is not a comparison transferkit wrote ({exc!r})") from exc
    with resealed(out, replacing=[path.name]):  # a sealed comparison stays sealed with its rebuilt report
        atomic_write_text(path, page)
    return path


def _modality(data: dict[str, Any]) -> Modality:
    return get_modality(str(data["config"]["base"].get("modality") or "image"))


def _input_size(base: dict[str, Any], modality: Modality) -> str:
    """The input-size options the runs shared, as set (none: each backbone's own)."""
    sizes = [f"{k.replace('_', ' ')} {base[k]}" for k in modality.input_options if base.get(k) is not None]
    return ", ".join(sizes) or "the backbone's own input size"
