"""``auto``'s entry point and its finish: choose, mix, score on the held-out share, export.

The finish is budgeted before the search starts (:func:`reserve`): the export's seconds are
remembered per backbone on this machine (first guess: :data:`EXPORT_SECONDS`), and the reserve
is that of the costliest backbone the search may ship, so the search hands over in time for the
whole command to end within its budget. ``auto.json`` stores paths relative to ``OUT``; the
result handed back names them inside ``OUT`` (a copied folder reports its own model).
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console

import transferkit.auto.clock as clocks
from transferkit.api import split_record
from transferkit.auto.clock import Clock, remember, remembered
from transferkit.auto.config import AutoConfig
from transferkit.auto.finish import BEST, held_out_scores, publish, recover_best, wise_ft
from transferkit.auto.search import Search, hold_out, serve_cost
from transferkit.auto.stored import resolved
from transferkit.auto.trail import Entry, Trail
from transferkit.config import FitConfig
from transferkit.deploy.export import export_onnx
from transferkit.errors import TransferkitError
from transferkit.metrics import wilson
from transferkit.modalities import Sample, get_modality
from transferkit.model import load_model
from transferkit.ownership import check_output_dir, claim_output_dir, output_lock, seal
from transferkit.pipeline import data_key, fit_to_data, load_data
from transferkit.records import RunRecord
from transferkit.runfolder import RunFolder
from transferkit.strategies import with_role
from transferkit.workflows.verdict import ALPHA, mcnemar

KIND = "auto search"
# First guesses of the export's seconds, before one is measured here (2 cores: Lite0 18 s, Lite2 17 s fp32)
EXPORT_SECONDS = {"onnx": 25.0, "int8": 45.0, "none": 0.0}
FINISH_SECONDS = 8.0  # held-out scoring, WiSE-FT's validation pass, the report
INT8_AGREEMENT = 0.99  # an int8 file that agrees with PyTorch on fewer top-1 labels is not shipped


def reserve(cfg: AutoConfig, backbones: Sequence[str]) -> float:
    """Seconds the finish needs: the export of the costliest of ``backbones`` (any of them may
    be shipped) as measured last time here, plus scoring and report."""
    known = remembered()
    export = max(known.get(f"{b}:{cfg.deploy}", EXPORT_SECONDS[cfg.deploy]) for b in backbones)
    return export + FINISH_SECONDS + 0.03 * cfg.seconds  # and a margin for what no prediction sees


def auto(data: str | Path, config: AutoConfig | None = None, *, out: str | Path, console: Console | None = None,
         started: float | None = None) -> dict[str, Any]:  # fmt: skip
    """Search for the best transfer of ``data`` within ``config.budget``; the result as ``auto.json``'s.
    The budget counts from ``started`` (``time.time()``; the command line passes its process's
    start), else from this call."""
    started = clocks.wall_time() if started is None else started  # reading the data counts too
    cfg = config or AutoConfig()
    out = Path(out)
    check_output_dir(out, KIND, "--out")
    base = FitConfig(seed=cfg.seed, device=cfg.target)
    splits = load_data(data, base)
    base = fit_to_data(base, splits)
    search_splits, held = hold_out(splits, cfg, base.val_fraction)
    claim_output_dir(out, KIND, "--out")
    with output_lock(out), _sealed_at_the_end(out):
        trail = Trail.open(out, cfg.to_dict(), data_key(splits))
        recover_best(out)
        if trail.result is not None and (out / BEST).is_dir():  # finished: report it, spend nothing
            return resolved(out, trail.result)
        clock = Clock(cfg.seconds, out, started).start()
        try:
            if clock.left() <= 0 and (out / BEST).is_dir():
                raise TransferkitError(f"{out} has spent its {cfg.budget} budget; rerun with a larger --budget")
            # the export's reserve is kept from the start: the ranking and the first probe spend around it
            first = reserve(cfg, [str(base.backbone), *cfg.backbones])
            search = Search(cfg, base, search_splits, out, clock, trail, console, first)
            search.say(f"{len(splits.classes)} classes; {len(search_splits.train)} train / {len(search_splits.val)} "
                       f"val / {len(held)} held out; {clock.left():.0f}s of the {cfg.budget} budget left")  # fmt: skip
            backbones = search.backbones()
            search.reserve = reserve(cfg, backbones)
            side = search.side(backbones[0], with_role("fine-tune").name)  # the input side the fine-tuning plans share
            search.anytime(backbones[0], side)
            chosen = search.plans(backbones, side)
            search.halve(chosen)
            search.probes()
            return finish(search, held, Path(data))
        finally:
            clock.stop()


@contextlib.contextmanager
def _sealed_at_the_end(out: Path) -> Iterator[None]:
    """Done, finished earlier or refused: every file as written, so an edit made afterwards makes OUT
    the user's. An interrupted search stays open for the rerun that continues it."""
    try:
        yield
    except TransferkitError:
        if out.is_dir():
            seal(out, KIND)
        raise
    seal(out, KIND)


def choose(search: Search) -> RunRecord:
    """The most accurate run on validation; a run the paired test cannot tell from it that is
    cheaper to serve (a smaller backbone or input) wins. Among equals, the more accurate."""
    records = list(search.records.values())
    best = max(records, key=lambda r: r.val["accuracy"])
    ties = [r for r in records if r is best or _tie(r, best)]
    return min(ties, key=lambda r: (serve_cost(search.plan_of(r)), -r.val["accuracy"]))


def _tie(a: RunRecord, b: RunRecord) -> bool:
    x, y = a.predictions.correct(), b.predictions.correct()
    return len(x) == len(y) and mcnemar(x, y) >= ALPHA


def finish(search: Search, held: list[Sample], data: Path) -> dict[str, Any]:
    out, cfg, trail = search.out, search.cfg, search.trail
    best = choose(search)
    final_dir = Path(best.run_dir)
    search.say(f"chosen: {search.plan_of(best).label} (val {best.val['accuracy']:.3f})")
    mixed = _wise_ft(search, best)
    if mixed is not None:
        final_dir = mixed
    split = split_record(dataclasses.replace(search.splits, test=tuple(held)))
    publish(final_dir, out, split)
    model = load_model(out / BEST)
    held, skipped = model.modality.scorable(held)  # an unreadable item is skipped, never replaced
    scores = held_out_scores(model, held)
    correct = int((scores.y_true == scores.y_pred).sum())
    low, high = wilson(correct, len(held))
    result: dict[str, Any] = {  # paths relative to OUT: the folder may be moved or copied
        "model": BEST, "plan": search.plan_of(best).to_dict(), "label": search.plan_of(best).label,
        "wise_ft": mixed is not None, "val_accuracy": best.val["accuracy"],
        "held_out": {"accuracy": scores.accuracy, "low": low, "high": high, "items": len(held), "skipped": skipped,
                     "y_true": scores.y_true.tolist(), "y_pred": scores.y_pred.tolist(),
                     "confidence": scores.confidence.tolist(),
                     "items_shown": [s.text if s.text is not None else str(s.path) for s in held]},
        "classes": list(search.splits.classes), "modality": search.splits.modality,
        "run_dir": search.rel(best.run_dir), "budget_seconds": cfg.seconds,
    }  # fmt: skip
    result["exports"] = _export(search, data, search.plan_of(best).backbone)
    result["seconds"] = search.clock.spent()
    trail.result = result
    trail.save()
    from transferkit.reports.auto import write_auto_report

    write_auto_report(out, items=result["held_out"]["items_shown"])  # thumbnails of its worst errors
    return resolved(out, result)


def _wise_ft(search: Search, best: RunRecord) -> Path | None:
    """WiSE-FT of the chosen run, kept where the paired test on validation says it is better;
    only when the time it takes (about a validation pass, bounded by the plan's frozen passes)
    leaves the export its reserve."""
    cost = (search.trail.schedule or {}).get("costs", {}).get(search.plan_of(best).label)
    needed = float(cost["fixed"]) if cost else FINISH_SECONDS
    if search.clock.left() < search.reserve + needed or not (Path(best.run_dir) / RunFolder.START).is_file():
        return None
    into = search.out / "runs" / f"{Path(best.run_dir).name}-wise-ft"
    key = f"wise-ft:{into.name}"
    start = search.clock.spent()
    claim_output_dir(into, "run", "--out")
    mixed = wise_ft(Path(best.run_dir), into)
    if mixed is None:
        return None
    seal(into, "run")
    scores = held_out_scores(mixed, search.splits.val)
    mine = (scores.y_true == scores.y_pred).astype(int).tolist()
    theirs = best.predictions.correct()
    paired = len(mine) == len(theirs)  # an item skipped as unreadable leaves nothing to pair
    better = paired and scores.accuracy > best.val["accuracy"] and mcnemar(mine, theirs) < ALPHA
    low, high = wilson(sum(mine), len(mine))
    verdict = (
        "kept: better by the paired test"
        if better
        else (f"not kept: {scores.accuracy:.3f} vs {best.val['accuracy']:.3f}, not better by the paired test")
    )
    search.trail.add(Entry(key, f"WiSE-FT (α=0.5) of {search.plan_of(best).label}", "wise-ft",
                           "final" if better else "dropped", verdict, 0, None, search.clock.spent() - start, start,
                           search.clock.spent(), scores.accuracy, low, high, search.rel(into)))  # fmt: skip
    search.say(f"WiSE-FT: val {scores.accuracy:.3f}; {verdict}")
    return into if better else None


def _export(search: Search, data: Path, backbone: str) -> list[dict[str, Any]]:
    cfg = search.cfg
    if cfg.deploy == "none":
        return []
    key = f"{backbone}:{cfg.deploy}"
    start = search.clock.spent()
    needed = remembered().get(key, EXPORT_SECONDS[cfg.deploy])
    if search.clock.left() < needed:
        search.trail.add(Entry("export", "export", "export", "skipped",
                               f"{search.clock.left():.0f}s left, the export needs about {needed:.0f}s: run "
                               f"`transferkit export {search.out / BEST}`", start=start))  # fmt: skip
        return []
    quantize: tuple[str, ...] = ()
    if cfg.deploy == "int8":
        quantize = (get_modality(search.splits.modality).int8,)  # the modality says how its models quantize
    began = time.perf_counter()
    try:
        rows = export_onnx(search.out / BEST, search.out / BEST / "model.onnx", quantize=quantize,
                           calibrate=data if "static" in quantize else None, repeats=3, split="test")  # fmt: skip
    except TransferkitError as exc:
        search.trail.add(Entry("export", "export", "export", "dropped", str(exc), start=start))
        return []
    remember(key, time.perf_counter() - began)
    shipped = []
    for row in rows[1:]:
        if row.format.startswith("ONNX int8") and (row.agreement or 0) < INT8_AGREEMENT:
            Path(row.file).unlink(missing_ok=True)
            search.say(f"{row.format}: agrees on {row.agreement:.1%} of top-1 labels; not shipped")
            continue
        shipped.append({**dataclasses.asdict(row), "file": search.rel(row.file)})
    search.trail.add(Entry("export", "export " + ", ".join(r["format"] for r in shipped), "export", "finished",
                           "", actual=time.perf_counter() - began, start=start, end=search.clock.spent()))  # fmt: skip
    return shipped
