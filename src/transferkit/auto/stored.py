"""What ``OUT/auto.json`` may hold, checked before a search continues from it or reports it.

The file is untrusted input, as every run file is (:mod:`transferkit.schema`): a folder may be
copied, received from someone else or edited. Every field a search reads back is checked for
its type and bounds, a backbone or strategy it names must be one this install would search, a
path must stay inside the search's own folder (:func:`transferkit.schema.inside`, as every run
file's), and a finished result's numbers must follow from
its own per-item predictions. A violation is one :class:`~transferkit.schema.SchemaError`.

Paths are stored relative to the folder (``best``, ``runs/<plan>``, ``best/model.onnx``) and
resolved against it when read (:func:`resolved`), so a copied folder reports its own model. A
folder an older transferkit finished stored them as it was given them (absolute, or relative to
the directory it ran in): such a path is read as its relative name when it lies inside the
folder (:func:`migrated`), and refused with a hint to use a new ``--out`` when it does not.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from transferkit.auto.config import MOST_SECONDS
from transferkit.backbones import registered_names
from transferkit.metrics import wilson
from transferkit.modalities.base import modality_names
from transferkit.modalities.image_io import SIDE
from transferkit.schema import OneOf, SchemaError, check_mapping, check_names, check_stored_name, inside
from transferkit.strategies import registered_strategies

MAX_TEXT = 10_000  # characters of a label, a reason or a stored path (a trail's reason is cut to it when written)
MAX_COUNT = 10**9  # steps, items, bytes: any count the search books
BEST = "best"  # the one place a finished search's model lives: OUT/best
_ENTRY_TEXTS = ("key", "label", "stage", "status", "reason")
_ENTRY_SECONDS = ("predicted", "actual", "end")
_SCORES = ("accuracy", "low", "high")
_ENTRY_KEYS = {*_ENTRY_TEXTS, *_ENTRY_SECONDS, *_SCORES, "steps", "start", "run_dir"}
_PLAN_KEYS = {"backbone", "strategy", "unfreeze", "image_size"}


def _text(where: str, field: str, value: Any) -> str:
    if not isinstance(value, str) or len(value) > MAX_TEXT:
        raise SchemaError(where, field, value, f"expected a string of at most {MAX_TEXT:,} characters")
    return value


def _number(where: str, field: str, value: Any, low: float, high: float, whole: bool = False) -> float:
    # no float() of an int first: an int of 400 digits would raise OverflowError, not this message
    if isinstance(value, bool) or not isinstance(value, int | float) or (whole and not isinstance(value, int)):
        raise SchemaError(where, field, value, f"expected {'a whole number' if whole else 'a number'}")
    if not low <= value <= high or (isinstance(value, float) and not math.isfinite(value)):
        raise SchemaError(where, field, value, f"expected a number in [{low:g}, {high:g}]")
    return value


def _maybe(where: str, field: str, value: Any, low: float, high: float) -> None:
    if value is not None:
        _number(where, field, value, low, high)


def _list(where: str, field: str, value: Any) -> list[Any]:
    if not isinstance(value, list) or len(value) > MAX_COUNT:
        raise SchemaError(where, field, type(value).__name__, "expected a JSON list")
    return value


def check_plan(where: str, field: str, value: Any) -> dict[str, Any]:
    """A plan's fields, as :class:`~transferkit.auto.plans.Plan` takes them."""
    plan = dict(check_mapping(where, field, value))
    if set(plan) != _PLAN_KEYS:
        raise SchemaError(where, field, sorted(plan), f"expected the keys {', '.join(sorted(_PLAN_KEYS))}")
    check_stored_name(where, f"{field}.backbone", plan["backbone"], registered_names(), hub_ids=True)
    OneOf(tuple(s.name for s in registered_strategies())).check(where, f"{field}.strategy", plan["strategy"])
    if plan["unfreeze"] is not None:
        _number(where, f"{field}.unfreeze", plan["unfreeze"], 0, 1000, whole=True)
    if plan["image_size"] not in (None, "auto"):
        # image_io's one declaration, as --image-size and config.json are bounded
        _number(where, f"{field}.image_size", plan["image_size"], SIDE.low, SIDE.high, whole=True)
    return plan


def check_entry(where: str, value: Any) -> dict[str, Any]:
    """One row of the decision trail, as :class:`~transferkit.auto.trail.Entry` takes it."""
    entry = dict(check_mapping(where, "trail[]", value))
    if set(entry) != _ENTRY_KEYS:
        raise SchemaError(where, "trail[]", sorted(set(entry) ^ _ENTRY_KEYS), "expected the keys of a trail row")
    for name in _ENTRY_TEXTS:
        _text(where, f"trail.{name}", entry.get(name))
    _number(where, "trail.steps", entry.get("steps"), 0, MAX_COUNT, whole=True)
    _number(where, "trail.start", entry.get("start"), -1.0, 10 * MOST_SECONDS)
    for name in _ENTRY_SECONDS:
        _maybe(where, f"trail.{name}", entry.get(name), -1.0, 10 * MOST_SECONDS)
    for name in _SCORES:
        _maybe(where, f"trail.{name}", entry.get(name), 0.0, 1.0)
    if entry.get("run_dir") is not None:
        _text(where, "trail.run_dir", entry["run_dir"])
    return entry


def check_ranking(where: str, value: Any) -> list[dict[str, Any]] | None:
    if value is None:
        return None
    rows = [dict(check_mapping(where, "ranking[]", row)) for row in _list(where, "ranking", value)]
    if not rows:
        raise SchemaError(where, "ranking", value, "expected at least one backbone")
    for row in rows:
        check_stored_name(where, "ranking.backbone", row.get("backbone"), registered_names(), hub_ids=True)
        _maybe(where, "ranking.logme", row.get("logme"), -1e12, 1e12)
    return rows


def check_schedule(where: str, value: Any) -> dict[str, Any] | None:
    """The schedule a continued search runs: plans, equally long lists of rungs, costs."""
    if value is None:
        return None
    saved = dict(check_mapping(where, "schedule", value))
    plans = _list(where, "schedule.plans", saved.get("plans"))
    for plan in [*plans, *_list(where, "schedule.closed_form", saved.get("closed_form", []))]:
        check_plan(where, "schedule.plans[]", plan)
    steps, keep = _list(where, "schedule.steps", saved.get("steps")), _list(where, "schedule.keep", saved.get("keep"))
    if len(steps) != len(keep):
        raise SchemaError(where, "schedule.keep", keep, "expected one plan count per rung of schedule.steps")
    for rung_steps, count in zip(steps, keep, strict=True):
        _number(where, "schedule.steps[]", rung_steps, 1, MAX_COUNT, whole=True)
        _number(where, "schedule.keep[]", count, 1, len(plans), whole=True)
    _number(where, "schedule.predicted", saved.get("predicted"), 0.0, 10 * MOST_SECONDS)
    _number(where, "schedule.fewest", saved.get("fewest", 1), 1, MAX_COUNT, whole=True)
    for label, cost in check_mapping(where, "schedule.costs", saved.get("costs", {})).items():
        cost = check_mapping(where, f"schedule.costs[{label[:60]!r}]", cost)
        if set(cost) != {"fixed", "step"}:
            raise SchemaError(where, "schedule.costs[]", sorted(cost), "expected the keys fixed, step")
        _number(where, "schedule.costs[].fixed", cost["fixed"], 0.0, 10 * MOST_SECONDS)
        _number(where, "schedule.costs[].step", cost["step"], 0.0, MOST_SECONDS)
    return saved


def check_result(out: Path, where: str, value: Any) -> dict[str, Any] | None:
    """A finished search's result: its paths inside ``out``, its held-out numbers those its
    per-item predictions give."""
    if value is None:
        return None
    result = dict(check_mapping(where, "result", value))
    for name in ("model", "run_dir"):  # an older transferkit's paths, as their names inside OUT
        result[name] = _stored_path(out, where, f"result.{name}", result.get(name))
    OneOf((BEST,)).check(where, "result.model", result.get("model"))  # one place: OUT/best
    for name in ("model", "run_dir"):  # and never a link out of OUT
        inside(out, result.get(name), where, f"result.{name}")
    check_plan(where, "result.plan", result.get("plan"))
    _text(where, "result.label", result.get("label"))
    if not isinstance(result.get("wise_ft"), bool):
        raise SchemaError(where, "result.wise_ft", result.get("wise_ft"), "expected true or false")
    _number(where, "result.val_accuracy", result.get("val_accuracy"), 0.0, 1.0)
    classes = check_names(where, "result.classes", result.get("classes"), at_least=2)
    OneOf(modality_names()).check(where, "result.modality", result.get("modality"))
    _number(where, "result.budget_seconds", result.get("budget_seconds"), 0.0, MOST_SECONDS)
    _number(where, "result.seconds", result.get("seconds"), 0.0, 10 * MOST_SECONDS)
    _check_held_out(where, result.get("held_out"), len(classes))
    exports = [
        dict(check_mapping(where, "result.exports[]", row))
        for row in _list(where, "result.exports", result.get("exports"))
    ]
    for row in exports:
        row["file"] = _stored_path(out, where, "result.exports.file", row.get("file"))
        _text(where, "result.exports.format", row.get("format"))
        inside(out, row.get("file"), where, "result.exports.file")
        for name in ("accuracy", "agreement"):
            _maybe(where, f"result.exports.{name}", row.get(name), 0.0, 1.0)
    result["exports"] = exports
    return result


def migrated(out: Path, value: Any) -> Any:
    """``value`` as this version stores it: a path an older transferkit wrote (absolute, or
    relative to the directory it ran in) that lies inside ``out``, as its name relative to
    ``out``. Anything else (a name already relative to ``out``, a path outside it) is returned
    as it is, for the checks to take or refuse."""
    if not isinstance(value, str) or not value or len(value) > MAX_TEXT or "\0" in value:
        return value
    try:
        if not Path(value).is_absolute() and (out / value).exists():  # this version's own name
            return value
        root, path = out.resolve(), Path(value).resolve()  # a relative one: against the working directory
    except (OSError, RuntimeError, ValueError):  # a name too long, a link loop
        return value
    if path == root or not path.is_relative_to(root):
        return value
    return path.relative_to(root).as_posix()


def _stored_path(out: Path, where: str, field: str, value: Any) -> Any:
    """:func:`migrated`, and an older transferkit's path that does not lie inside ``out`` (an
    absolute one; a model named other than ``best``) refused with what to do."""
    value = migrated(out, value)
    if isinstance(value, str) and (
        Path(value).is_absolute() or (field == "result.model" and value != BEST and Path(value).name == BEST)
    ):
        raise SchemaError(
            where, field, value, "a path outside this folder: written by an older transferkit; use a new --out"
        )
    return value


def _check_held_out(where: str, value: Any, classes: int) -> None:
    held = check_mapping(where, "result.held_out", value)
    items = int(_number(where, "result.held_out.items", held.get("items"), 1, MAX_COUNT, whole=True))
    lists = {name: _list(where, f"result.held_out.{name}", held.get(name))
             for name in ("y_true", "y_pred", "confidence", "items_shown")}  # fmt: skip
    for name, values in lists.items():
        if len(values) != items:
            raise SchemaError(where, f"result.held_out.{name}", len(values), f"expected {items} values (items)")
    for name in ("y_true", "y_pred"):
        for label in lists[name]:
            _number(where, f"result.held_out.{name}[]", label, 0, classes - 1, whole=True)
    for confidence in lists["confidence"]:
        _number(where, "result.held_out.confidence[]", confidence, 0.0, 1.0)
    for shown in lists["items_shown"]:
        _text(where, "result.held_out.items_shown[]", shown)
    correct = sum(t == p for t, p in zip(lists["y_true"], lists["y_pred"], strict=True))
    low, high = wilson(correct, items)
    for name, own in (("accuracy", correct / items), ("low", low), ("high", high)):
        stored = _number(where, f"result.held_out.{name}", held.get(name), 0.0, 1.0)
        if abs(stored - own) > 1e-6:  # an edited score: it must be what the predictions give
            expected = f"expected {own:.6f}, as its y_true and y_pred give"
            raise SchemaError(where, f"result.held_out.{name}", stored, expected)


def resolved(out: Path, result: Mapping[str, Any]) -> dict[str, Any]:
    """``result`` with its stored (relative) paths joined to ``out``: what the caller reports."""
    exports = [{**row, "file": str(out / row["file"])} for row in result["exports"]]
    return {**result, "model": str(out / result["model"]), "run_dir": str(out / result["run_dir"]),
            "exports": exports}  # fmt: skip


__all__ = ["check_entry", "check_plan", "check_ranking", "check_result", "check_schedule", "migrated", "resolved"]
