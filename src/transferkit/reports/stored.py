"""A comparison's ``results.json`` read back: every field the report reads, checked before use.

The file may come from someone else (a received comparison folder) or have been edited, and
``transferkit report DIR`` rebuilds the page from it alone. So each field that sizes a loop or
an allocation is held to what ``compare`` could have written: the options' own bounds (through
:func:`transferkit.params.check_stored`), records consistent with the classes they index (a
label is a position in ``classes``), a class count the records can account for, rows one per
measured (backbone, strategy). A violation is one :class:`~transferkit.schema.SchemaError`
naming the field and its value — never a traceback, never a 75 GiB confusion matrix.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from transferkit.config import FitConfig
from transferkit.errors import ConfigError
from transferkit.modalities import get_modality
from transferkit.params import MAX_ITEMS, MAX_TEXT, UNPRINTABLE, check_stored
from transferkit.records import MAX_PARAMS, RowError, RunKey, RunRecord, check_history, check_phases
from transferkit.schema import Interval, SchemaError, check_mapping, check_names

FRACTION = Interval(float, 0, 1)  # accuracies, F1 scores and their spreads
FIGURE = Interval(float, 0, 1e15)  # seconds, items per second, bytes
PARAMS = Interval(int, 0, MAX_PARAMS)
SEED = Interval(int, 0, 2**32 - 1)  # a run's seed, as the seed option's bound
COUNT = Interval(int, 1, 2**32)  # seeds or folds: then held to the records' own (never more than seeds exist)
REQUIRED = ("config", "classes", "records", "rows", "recommendation", "warnings", "prior", "memory_estimates")
# the rows' figures the page prints; each is a mean or spread of the records' own
ROW_FRACTIONS = ("val_accuracy_mean", "val_accuracy_std", "val_macro_f1_mean", "val_macro_f1_std")
ROW_OPTIONAL = ("val_accuracy_low", "val_accuracy_high", "test_accuracy_mean", "test_accuracy_std",
                "test_macro_f1_mean", "test_macro_f1_std")  # fmt: skip
ROW_FIGURES = ("train_seconds", "images_per_second", "peak_memory_bytes", "memory_growth_bytes")
ESTIMATE_PARTS = ("weights", "gradients", "optimizer", "activations", "total")


def check_comparison(data: dict[str, Any], where: str) -> dict[str, Any]:
    """``data`` (a ``results.json``) if every field the report reads holds; else one SchemaError."""
    for name in REQUIRED:
        if name not in data:
            raise SchemaError(where, name, "(missing)", "expected the comparison's field")
    classes = check_names(where, "classes", data["classes"], at_least=2)
    backbones, strategies, plan = _config(where, data["config"])
    records = _records(where, data["records"], len(classes), plan)
    for r in records:  # a comparison only runs the plan its config names
        if r.backbone not in backbones or r.strategy not in strategies:
            raise SchemaError(where, "records", f"{r.backbone} · {r.strategy}", "expected a run the config plans")
    _runs(where, data["config"], records)
    _justified(where, len(classes), records)
    keys = _rows(where, data["rows"], records)
    rec = check_mapping(where, "recommendation", data["recommendation"])
    if (rec.get("backbone"), rec.get("strategy")) not in keys or not isinstance(rec.get("reason"), str):
        raise SchemaError(where, "recommendation", rec, "expected one of the rows and a reason")
    prior = check_mapping(where, "prior", data["prior"])
    for name in ("strategy", "reason"):
        _text(where, f"prior.{name}", prior.get(name))
    if prior.get("batchnorm_shift") is not None:
        Interval(float, -1e15, 1e15).check(where, "prior.batchnorm_shift", prior["batchnorm_shift"])
    warnings = data["warnings"]
    if not isinstance(warnings, list) or len(warnings) > 2 * len(keys) + 8:  # two per backbone, one on resolution
        raise SchemaError(where, "warnings", type(warnings).__name__, "expected a short list of lines")
    for i, line in enumerate(warnings):
        _text(where, f"warnings[{i}]", line, limit=None)
    _estimates(where, data["memory_estimates"], {RunKey(b, s).id for b, s in keys})
    return data


def _text(where: str, field: str, value: Any, limit: int | None = 1_000) -> str:
    if not isinstance(value, str) or (limit is not None and len(value) > limit):
        raise SchemaError(where, field, value, f"expected text{f' of at most {limit:,} characters' if limit else ''}")
    return value


def _config(where: str, config: Any) -> tuple[list[str], list[str], int]:
    """The options the page prints and the plan's size: each checked by the declaration of the
    option that set it (every run's ``--epochs`` is the budget), the seeds and folds against the
    records afterwards (:func:`_runs`)."""
    config = check_mapping(where, "config", config)
    for name in ("backbones", "strategies", "budget_epochs", "seeds", "base"):
        if name not in config:
            raise SchemaError(where, f"config.{name}", "(missing)", "expected the comparison's option")
    names = [_names(where, f"config.{name}", config[name]) for name in ("backbones", "strategies")]
    base = check_mapping(where, "config.base", config["base"])
    modality = base.get("modality") or "image"
    try:
        _stored(FitConfig, {"epochs": config["budget_epochs"]}, "config.budget_epochs")
        _stored(FitConfig, {"modality": modality}, "config.base.modality")
        for name in ("batch_size", *get_modality(modality).input_options):
            if name in base or name == "batch_size":
                _stored(FitConfig, {name: base.get(name)}, f"config.base.{name}")
    except ConfigError as exc:  # a ValueError too: named here, not wrapped as an unknown failure
        raise SchemaError(where, exc.field, exc.value, exc.fix) from None
    seeds = COUNT.check(where, "config.seeds", config["seeds"])
    folds = COUNT.check(where, "config.folds", config.get("folds", 1))  # comparisons before --folds: 1
    return names[0], names[1], len(names[0]) * len(names[1]) * seeds * folds


def _stored(cls: type, values: dict[str, Any], field: str) -> None:
    """One stored option against its declaration, the error naming it as ``field``."""
    try:
        check_stored(cls, values, "config")
    except ConfigError as exc:
        raise ConfigError(field, exc.value, exc.fix) from None


def _names(where: str, field: str, value: Any) -> list[str]:
    """A list option read back (backbones, strategies): as many names as an option holds, each once."""
    if (
        not isinstance(value, list)
        or not 1 <= len(value) <= MAX_ITEMS
        or not all(isinstance(v, str) and 0 < len(v) <= MAX_TEXT and not UNPRINTABLE.search(v) for v in value)
        or len(set(value)) != len(value)
    ):
        raise SchemaError(where, field, value, f"expected 1 to {MAX_ITEMS} distinct names")
    return list(value)


def _runs(where: str, config: Mapping[str, Any], records: list[RunRecord]) -> None:
    """The records are the config's runs, each once: its seeds, and its folds (or none)."""
    seen: set[tuple[str, str, int, int | None]] = set()
    for r in records:
        run = (r.backbone, r.strategy, r.seed, r.fold)
        if run in seen:
            raise SchemaError(where, "records", run, "expected each (backbone, strategy, seed, fold) once")
        seen.add(run)
    seeds = {r.seed for r in records}
    if config["seeds"] != len(seeds):
        raise SchemaError(where, "config.seeds", config["seeds"], f"expected {len(seeds)}: the seeds the records ran")
    folds = config.get("folds", 1)
    found = {r.fold for r in records}  # as many as the records hold: never a set of `folds` made first
    ran = found == {None} if folds == 1 else len(found) == folds and found == set(range(folds))
    if not ran:
        raise SchemaError(where, "config.folds", folds, f"expected the folds the records ran ({len(found):,})")


def _records(where: str, values: Any, classes: int, plan: int) -> list[RunRecord]:
    """One record per planned run at most, each checked field by field, then whole."""
    if not isinstance(values, list) or not 1 <= len(values) <= plan:
        shown = f"{len(values):,} records" if isinstance(values, list) else type(values).__name__
        raise SchemaError(where, "records", shown, f"expected 1 to {plan:,} runs (the plan the config names)")
    records = []
    for i, value in enumerate(values):
        at = f"records[{i}]"
        value = check_mapping(where, at, value)
        for name in ("backbone", "strategy"):
            _text(where, f"{at}.{name}", value.get(name), limit=200)
        _text(where, f"{at}.memory_kind", value.get("memory_kind", "rss"), limit=100)
        SEED.check(where, f"{at}.seed", value.get("seed"))
        if value.get("fold") is not None:
            SEED.check(where, f"{at}.fold", value["fold"])  # a position among the folds: checked against them later
        for split in ("val", "test"):
            if split == "val" or value.get(split) is not None:
                _scores(where, f"{at}.{split}", value.get(split))
        for name in ("train_seconds", "images_per_second", "peak_memory_bytes", "memory_growth_bytes"):
            FIGURE.check(where, f"{at}.{name}", value.get(name, 0.0 if name == "memory_growth_bytes" else None))
        for name in ("trainable_params", "frozen_params"):
            PARAMS.check(where, f"{at}.{name}", value.get(name))
        try:
            check_history(f"{at}.history", value.get("history", []))
            check_phases(f"{at}.phases", value.get("phases", []))
        except RowError as exc:
            raise SchemaError(where, exc.field, exc.value, exc.expected) from None
        _predictions(where, f"{at}.predictions", value.get("predictions"), classes)
        record = RunRecord.from_dict(value)
        if record is None:  # a field the checks above do not name (a bool seed, a foreign key)
            raise SchemaError(where, at, sorted(value), "expected a run record transferkit wrote")
        records.append(record)
    return records


def _scores(where: str, field: str, value: Any) -> None:
    scores = check_mapping(where, field, value)
    FRACTION.check(where, f"{field}.accuracy", scores.get("accuracy"))
    for name, bound in (("macro_f1", FRACTION), ("loss", Interval(float, -1e15, 1e15))):
        if name in scores:
            bound.check(where, f"{field}.{name}", scores[name])


def _predictions(where: str, field: str, value: Any, classes: int) -> None:
    """Per validation item a label and a prediction, each a position in ``classes``, and a confidence."""
    value = check_mapping(where, field, value)
    items = value.get("items", value.get("paths"))  # "paths": comparisons from before 0.2
    lists = {name: value.get(name) for name in ("y_true", "y_pred", "confidence")}
    for name, given in {**lists, "items": items}.items():
        if not isinstance(given, list):
            raise SchemaError(where, f"{field}.{name}", type(given).__name__, "expected a list")
    n = len(lists["y_true"])
    if any(len(v) != n for v in lists.values()) or (n and len(items) != n):
        lengths = {k: len(v) for k, v in {**lists, "items": items}.items()}
        raise SchemaError(where, field, lengths, "expected one label, prediction, confidence and item per item")
    label = Interval(int, 0, classes - 1)
    for name in ("y_true", "y_pred"):
        for j, v in enumerate(lists[name]):
            label.check(where, f"{field}.{name}[{j}]", v)
    for j, v in enumerate(lists["confidence"]):
        FRACTION.check(where, f"{field}.confidence[{j}]", v)
    for j, v in enumerate(items):
        _text(where, f"{field}.items[{j}]", v, limit=None)


def _justified(where: str, classes: int, records: list[RunRecord]) -> None:
    """As many classes as the runs can tell apart: each trains a head with at least one weight
    per class, so no run trains fewer parameters than there are classes."""
    fewest = min(records, key=lambda r: r.trainable_params)
    if classes > fewest.trainable_params:
        raise SchemaError(
            where, "classes", f"{classes:,} names",
            f"expected at most {fewest.trainable_params:,}: run {fewest.key.id} (seed {fewest.seed}) trains "
            f"{fewest.trainable_params:,} parameters, and its head alone has at least one per class",
        )  # fmt: skip


def _rows(where: str, values: Any, records: list[RunRecord]) -> set[tuple[str, str]]:
    """One row per measured (backbone, strategy), with the figures the page prints."""
    measured = {(r.backbone, r.strategy) for r in records}
    if not isinstance(values, list) or len(values) != len(measured):
        shown = f"{len(values):,} rows" if isinstance(values, list) else type(values).__name__
        raise SchemaError(
            where, "rows", shown, f"expected {len(measured)}, one per (backbone, strategy) the records ran"
        )
    seen: set[tuple[str, str]] = set()
    for i, row in enumerate(values):
        at = f"rows[{i}]"
        row = check_mapping(where, at, row)
        key = (row.get("backbone"), row.get("strategy"))
        if key not in measured or key in seen:
            raise SchemaError(where, at, key, "expected a (backbone, strategy) the records measured, once")
        seen.add(key)
        for name in ROW_FRACTIONS + tuple(n for n in ROW_OPTIONAL if n in row):
            FRACTION.check(where, f"{at}.{name}", row.get(name))
        for name in ROW_FIGURES:
            FIGURE.check(where, f"{at}.{name}", row.get(name))
        for name in ("trainable_params", "frozen_params"):
            PARAMS.check(where, f"{at}.{name}", row.get(name))
        Interval(int, 1, len(records)).check(where, f"{at}.seeds", row.get("seeds"))
        kind = _text(where, f"{at}.memory_kind", row.get("memory_kind"), limit=100)
        if UNPRINTABLE.search(kind):
            raise SchemaError(where, f"{at}.memory_kind", kind, "expected printable text")
    return seen


def _estimates(where: str, values: Any, ids: set[str]) -> None:
    """Per (backbone, strategy) of the rows, one memory estimate per planned phase."""
    values = check_mapping(where, "memory_estimates", values)
    for key, phases in values.items():
        at = f"memory_estimates.{key}"
        if key not in ids or not isinstance(phases, list) or len(phases) > 64:
            raise SchemaError(where, at, type(phases).__name__, "expected a row's short list of phase estimates")
        for j, phase in enumerate(phases):
            phase = check_mapping(where, f"{at}[{j}]", phase)
            _text(where, f"{at}[{j}].phase", phase.get("phase"), limit=100)
            for part in ESTIMATE_PARTS:
                FIGURE.check(where, f"{at}[{j}].{part}", phase.get(part))


__all__ = ["check_comparison"]
