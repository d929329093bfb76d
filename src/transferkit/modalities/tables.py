"""Tables of items (CSV, TSV; a text table may be JSONL): every cell a reader uses is text.

One door for every table reader (text, audio, multi-task): a CSV row's cells are strings, a
short row's missing cells empty and a row with more cells than its header refused; a JSON
cell is a string, a whole number or true/false, and anything else (a list, an object, NaN)
is refused naming its line, never turned into a class by ``str()``.
"""

from __future__ import annotations

import csv
import json
import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from transferkit.errors import DataError

# A cell may hold a whole article; the csv module's default limit (128 KiB) would make such a
# row unreadable. Raised deliberately, with a bound, so one huge cell is still an error.
MAX_CELL_BYTES = 16 * 2**20


def read_table(path: Path) -> list[dict[str, str]]:
    """The rows of a CSV (or, by its suffix, TSV) as dicts; a UTF-8 byte-order mark (Excel
    writes one) is dropped, and a broken file is a :class:`DataError` naming it."""
    csv.field_size_limit(MAX_CELL_BYTES)
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f, delimiter=delimiter)
            return [_whole_row(row, reader, path) for row in reader]
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text ({exc}); save it as UTF-8") from exc
    except (OSError, csv.Error) as exc:
        raise DataError(f"{path} cannot be read ({exc})") from exc


def read_json_lines(path: Path) -> tuple[list[int], list[dict[str, Any]]]:
    """The objects of a JSONL table and the line each is on (blank lines skipped but counted);
    anything wrong is one :class:`DataError` naming the file and line — a line nested thousands
    deep too (json raises RecursionError, which only the CLI's last resort caught, unnamed)."""
    lines: list[int] = []
    records: list[dict[str, Any]] = []
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text ({exc}); save it as UTF-8") from exc
    except OSError as exc:
        raise DataError(f"{path} cannot be read ({exc})") from exc
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as exc:
            raise DataError(f"{path}, line {number}: not valid JSON ({exc})") from exc
        except RecursionError:
            raise DataError(f"{path}, line {number}: nested too deeply (lists or objects thousands deep)") from None
        if not isinstance(record, dict):
            raise DataError(f"{path}, line {number}: each line must be a JSON object")
        lines.append(number)
        records.append(record)
    return lines, records


def _whole_row(row: dict[str | None, Any], reader: csv.DictReader[str], path: Path) -> dict[str, str]:
    """Every cell text: a short row's missing cells are empty ("", as an empty cell), never
    None. A row with more filled cells than the header is refused: an unquoted comma in a text
    shifts the cells, and its label column would silently hold a piece of the text."""
    extra = row.pop(None, None) or []
    if any(str(cell).strip() for cell in extra):
        width = len(reader.fieldnames or ())
        raise DataError(
            f"{path}, line {reader.line_num}: {width + len(extra)} cells where the header names {width}; "
            "quote a cell that holds the delimiter"
        )
    return {str(k): v if isinstance(v, str) else "" for k, v in row.items()}


# Largest whole number a label may be: beyond it a float no longer names one integer.
_WHOLE = 2**53


def table_cell(value: object) -> str | None:
    """A cell of a table read as text (a text, a class name, a file name): a string (stripped),
    or a whole number or true/false, written as JSON writes them; "" for an empty cell or a
    JSON null (unlabelled, never a class named "None"). ``None`` for a value that names no one
    thing: a list or object (``["business"]`` must not become the class "['business']"), a
    fraction, NaN or infinity. Every table reader passes the cells it uses through this."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int) and abs(value) <= _WHOLE:
        return str(value)
    if isinstance(value, float) and math.isfinite(value) and value.is_integer() and abs(value) <= _WHOLE:
        return str(int(value))  # 3.0 (pandas writes integer labels so beside a gap) is the class "3"
    return None


def column_cells(
    records: Sequence[dict[str, Any]], lines: Sequence[int], columns: Sequence[str], path: Path
) -> list[tuple[str, ...]]:  # fmt: skip
    """The ``columns`` of each record (a row starting on the matching one of ``lines``) through
    :func:`table_cell`; a cell that names no one thing is refused with one line naming the rows
    and what they hold (by its type: a cell may be long), never turned into a class."""
    cells = [tuple(table_cell(r.get(c)) for c in columns) for r in records]
    odd = [
        f"line {line}: {column} is {_kind_of(r.get(column))}"
        for line, r, row in zip(lines, records, cells, strict=True)
        for column, cell in zip(columns, row, strict=True)
        if cell is None
    ]
    if odd:  # one class name per row: multi-label data (a list per row) is not read as classes
        more = f", and {len(odd) - 3} more" if len(odd) > 3 else ""
        raise DataError(
            f"{path}: {len(odd)} cell(s) hold no text or whole number ({'; '.join(odd[:3])}{more}); "
            "a label names one class, as a string"
        )
    return [tuple(c or "" for c in row) for row in cells]


def _kind_of(value: object) -> str:
    """What a refused cell holds, by its JSON type: its content may be long, or a patient's."""
    if isinstance(value, float):
        return f"the number {value!r}"  # NaN, inf, 0.5 or 1e300: short whatever the value
    if isinstance(value, int):
        return "a whole number beyond ±2^53"
    if isinstance(value, list | dict):
        return "a list" if isinstance(value, list) else "an object"
    return "a " + type(value).__name__


def check_label_column(labels: Sequence[str], path: Path, column: str) -> None:
    """Refuse a label column that names items, not classes (a user pointing ``--label-column`` at
    an ID column): when more than half the rows, and at least ten, are the only one with their
    label, most classes could not be both trained and validated on. Counted in one pass, before any split,
    so a table of 200,000 IDs is refused at once, naming the likely cause."""
    counts = Counter(labels)
    alone = sum(n == 1 for n in counts.values())
    if alone >= 10 and alone * 2 > len(labels):
        raise DataError(
            f"{path}: {alone:,} of {len(labels):,} rows are the only one with their label ({len(counts):,} distinct "
            f"values in column {column!r}); it looks like an ID column, not classes: name the class column with "
            "--label-column"
        )


def first_table_row(path: Path) -> dict[str, str]:
    """The first row of a table, or ``{}`` for anything unreadable: a modality's claim on a file
    only asks whether it looks like its own, and never fails on another modality's data."""
    csv.field_size_limit(MAX_CELL_BYTES)
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    try:
        with path.open(newline="", encoding="utf-8-sig", errors="replace") as f:
            return next(csv.DictReader(f, delimiter=delimiter), None) or {}
    except (OSError, csv.Error, ValueError):
        return {}
