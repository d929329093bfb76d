"""A run folder and the one place that knows what is in it.

Every file a run writes is named here, once: the model card (``config.json``), the weights,
the checkpoint that resumes it, the held-out split, the history, a comparison's record of it.
:class:`RunFolder` claims a folder for a run (never one of the user's), writes into it through
the one door to disk (:func:`transferkit.paths.atomic_write`, which journals every file as it
is written), and seals it when the command ends. The card, the weights and the checkpoint
carry one format version, :data:`FORMAT_VERSION`: a folder from a newer transferkit is
refused with a message that says so; one from before the field existed reads as version 0,
whose layout is the same.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from transferkit.errors import TransferkitError
from transferkit.ownership import LOCK, MARKER, claim_output_dir, output_lock, remove_owned, seal
from transferkit.paths import atomic_write_text

FORMAT_VERSION = 1  # of config.json, model.safetensors and checkpoint.safetensors together


def check_format_version(version: object, where: str) -> int:
    """The format version a file was written with (absent: 0, the same layout), or a one-line
    refusal for a newer or malformed one."""
    if version is None:
        return 0
    try:
        number = int(str(version))
    except ValueError:
        raise TransferkitError(f"{where}: format version {str(version)[:40]!r} is not a number") from None
    if number > FORMAT_VERSION or number < 0:
        raise TransferkitError(
            f"{where} was written by a newer transferkit (format {number}; this one reads up to "
            f"{FORMAT_VERSION}): upgrade transferkit to read it"
        )
    return number


@dataclass(frozen=True)
class RunFolder:
    """One run's folder: its files' names and paths, claimed, written and sealed here."""

    path: Path

    KIND: ClassVar[str] = "run"  # what its marker calls it
    CONFIG: ClassVar[str] = "config.json"  # the model card: the architecture to rebuild, how it was trained
    WEIGHTS: ClassVar[str] = "model.safetensors"
    CHECKPOINT: ClassVar[str] = "checkpoint.safetensors"  # the whole training state, until the run ends
    SPLIT: ClassVar[str] = "split.json"  # the held-out items (signed: a received run's names are not read)
    HISTORY: ClassVar[str] = "history.json"
    HISTORY_CSV: ClassVar[str] = "history.csv"
    RESULT: ClassVar[str] = "result.json"  # a comparison's record of the run, written last: it finished
    START: ClassVar[str] = "start.safetensors"  # auto: the weights before the first step (WiSE-FT's start)
    TENSORBOARD: ClassVar[str] = "tensorboard"  # --log tensorboard: a folder that answers for its own files
    # What a fresh run into a folder of an earlier one replaces: no stale history beside a new model
    REPLACED: ClassVar[tuple[str, ...]] = (CONFIG, WEIGHTS, HISTORY, HISTORY_CSV, SPLIT, CHECKPOINT)

    @property
    def config(self) -> Path:
        return self.path / self.CONFIG

    @property
    def weights(self) -> Path:
        return self.path / self.WEIGHTS

    def write_text(self, name: str, text: str) -> Path:
        atomic_write_text(self.path / name, text)
        return self.path / name

    def write_json(self, name: str, value: Any, indent: int | None = None) -> Path:
        return self.write_text(name, json.dumps(value, indent=indent))

    @contextlib.contextmanager
    def writing(self, resume: bool, option: str = "--out") -> Iterator[RunFolder]:
        """Claim the folder for one run (new, empty, or a run transferkit wrote: never a folder of
        the user's), lock it for the run's length and seal it when the run ends or is refused;
        a fresh run first clears the files an earlier run left (:attr:`REPLACED`). An
        interrupted run stays open, journalled, for the ``--resume`` that continues it."""
        created = not self.path.exists()
        claim_output_dir(self.path, self.KIND, option)
        try:
            with output_lock(self.path, option):
                try:
                    if not resume:
                        for name in self.REPLACED:
                            (self.path / name).unlink(missing_ok=True)
                    yield self
                except TransferkitError:  # refused: every file as written stays sealed
                    if self.path.is_dir():
                        seal(self.path, self.KIND)
                    raise
                seal(self.path, self.KIND)
        except TransferkitError:
            if created and {p.name for p in self.path.iterdir()} <= {MARKER, LOCK}:  # refused before any output
                remove_owned(self.path)
            raise
