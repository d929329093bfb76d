"""``transferkit auto``: from a folder to a shipped model within a wall-clock budget.

Read top to bottom, as the search runs:

1. hold out a stratified share (or use ``test/``) that no choice below ever sees;
2. rank the modality's offline zoo on cached features; the top backbones go on;
3. the linear probe of the best-ranked backbone, saved in ``OUT/best`` within the first minute;
4. candidate plans (backbone, strategy, depth, input size), each timed for a few steps, and
   successive halving over them in the seconds left after what the finish needs;
5. the finish (:mod:`.finish`, :mod:`.ship`): the best plan (ties: the cheaper to serve),
   WiSE-FT where it pays, the held-out score, the ONNX export, the report.

Every run lives in ``OUT/runs/<plan>``; every decision is booked in ``OUT/auto.json``, so a
rerun with the same ``--out`` skips what is finished, resumes what was cut, and spends only the
budget that is left (``OUT/clock.json``).
"""

from __future__ import annotations

import dataclasses
import functools
import statistics
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from transferkit.auto.clock import Clock, remember, remembered
from transferkit.auto.config import AutoConfig
from transferkit.auto.finish import StartWeights, publish
from transferkit.auto.halving import Schedule, promote, schedule
from transferkit.auto.plans import Cost, Plan, candidates, interleave, left_out, measure, steps_per_epoch
from transferkit.auto.trail import Entry, Trail
from transferkit.backbones import create_backbone, resolve_backbone
from transferkit.config import FitConfig
from transferkit.errors import DataError
from transferkit.events import Callback, Loop
from transferkit.layers import layer_groups
from transferkit.metrics import wilson
from transferkit.modalities import DatasetSplits, Sample, get_modality
from transferkit.modalities.common import stratified_split
from transferkit.records import RunRecord
from transferkit.runtime import resolve_device
from transferkit.strategies import with_role
from transferkit.workflows.compare import load_record, run_and_record

TOP_BACKBONES = 2  # backbones the ranking lets through to the search
RANK_ITEMS_PER_SECOND = 2.0  # ranking items per second of budget (5m: 600 items)
FEWEST_STEPS = 25  # the shortest first rung worth measuring
TIMING_ROOM = 4.0  # time one more backbone only while the time left is this many times its timing
TIMING_SECONDS = 10.0  # first guess of timing one plan, before this machine has timed one (2 cores: 7-10 s)
TIMING_SHARE = 0.5  # timing one more plan may take at most this share of the seconds left before the hand-over


def hold_out(splits: DatasetSplits, cfg: AutoConfig, val_fraction: float) -> tuple[DatasetSplits, list[Sample]]:
    """The search's splits and the held-out items: ``test/`` when the data has one, else a
    stratified share of every labelled item, drawn before anything is trained."""
    if splits.test:
        return dataclasses.replace(splits, test=()), list(splits.test)
    pool = [*splits.train, *splits.val]
    rest, held = stratified_split(pool, cfg.holdout, cfg.seed + 7919)  # its own stream: not the val split's
    train, val = stratified_split(rest, val_fraction, cfg.seed)
    if not held or not val:
        raise DataError(
            f"{len(pool)} labelled items are too few to hold out {cfg.holdout:.0%} and validate on another share; "
            "add items, or give a test/ split"
        )
    return dataclasses.replace(splits, train=tuple(train), val=tuple(val), test=(), duplicates=()), held


class OutOfTime(Exception):
    """A run still training at the search's hand-over: ended mid-epoch, so that the finish keeps
    the seconds it was promised (the export's among them)."""


class Deadline(Callback):
    """End a run in time for the hand-over: no epoch starts that would not end before it (an
    epoch is assumed as long as the longest one so far), and a batch that ends past it ends the
    run (:class:`OutOfTime`); the epochs before are kept in its checkpoint for a rerun."""

    def __init__(self, clock: Clock, stop_at: float) -> None:
        self.clock, self.stop_at, self.fired = clock, stop_at, False
        self.epoch_began: float | None = None
        self.epoch_seconds = 0.0

    def _check(self, loop: Loop) -> None:
        if self.clock.spent() + self.epoch_seconds >= self.stop_at:
            self.fired = True
            loop.summary["stopped_early"] = True
            loop.should_stop = True

    def on_phase_start(self, loop: Loop) -> None:
        self._check(loop)
        self.epoch_began = self.clock.spent()

    def on_before_backward(self, loop: Loop, loss: object) -> None:
        if self.clock.spent() >= self.stop_at:
            self.fired = True
            raise OutOfTime(f"still training at the hand-over ({self.stop_at:.0f}s of the budget)")

    def on_epoch_end(self, loop: Loop, record: object) -> None:
        now = self.clock.spent()
        if self.epoch_began is not None:
            self.epoch_seconds = max(self.epoch_seconds, now - self.epoch_began)
        self.epoch_began = now
        self._check(loop)


@dataclasses.dataclass
class TimingGate:
    """Lets :func:`~transferkit.auto.plans.measure` time one more plan only while the estimate of
    its timing fits in a share of what is left before the hand-over. The estimate: the longest
    timing of a plan of that backbone so far (its first plan also builds the network), else what
    this machine took last time, else :data:`TIMING_SECONDS`."""

    clock: Clock
    stop_at: float
    longest: dict[str, float] = dataclasses.field(default_factory=dict)  # by backbone
    last: tuple[str, float] | None = None  # the plan being timed: its backbone, when it began
    refused: Plan | None = None

    def __call__(self, plan: Plan) -> bool:
        self.done()
        known = remembered().get(f"{plan.backbone}:timing", TIMING_SECONDS)
        estimate = self.longest.get(plan.backbone, known)
        if estimate > TIMING_SHARE * (self.stop_at - self.clock.spent()):
            self.refused = plan
            return False
        self.last = (plan.backbone, self.clock.spent())
        return True

    def done(self) -> None:
        """Book the plan timed last (called before the next, and once after the last)."""
        if self.last is not None:
            backbone, began = self.last
            self.longest[backbone] = max(self.longest.get(backbone, 0.0), self.clock.spent() - began)
            self.last = None

    def remember(self) -> None:
        for backbone, seconds in self.longest.items():
            remember(f"{backbone}:timing", seconds)


@dataclasses.dataclass
class Search:
    """One search: its settings, data, clock and trail; ``ship.auto`` calls its stages in order."""

    cfg: AutoConfig
    base: FitConfig
    splits: DatasetSplits
    out: Path
    clock: Clock
    trail: Trail
    console: Console | None
    reserve: float  # seconds the finish needs (export, held-out scoring, report)
    records: dict[str, RunRecord] = dataclasses.field(default_factory=dict)  # by run folder name
    plans_of: dict[str, Plan] = dataclasses.field(default_factory=dict)

    def plan_of(self, record: RunRecord) -> Plan:
        return self.plans_of[Path(record.run_dir).name]

    @property
    def stop_at(self) -> float:
        """Budget seconds at which the search must hand over to the finish."""
        return self.clock.budget - self.reserve

    def say(self, text: str) -> None:
        if self.console:
            minutes, seconds = divmod(int(self.clock.spent()), 60)
            self.console.print(f"[dim]{minutes}:{seconds:02d}[/] {text}", highlight=False, soft_wrap=True)

    # ------------------------------------------------------------------ 2. backbones

    def backbones(self) -> list[str]:
        """The zoo (and ``--backbone``) ranked by LogME on a budget-sized share of the training items."""
        if self.trail.ranking is None:
            from transferkit.workflows.rank import _zoo, rank
            from transferkit.workflows.rank_config import RankConfig

            # the zoo's pre-trained members: their weights come in a package (not a random floor)
            offline = [b for b in _zoo(self.splits.modality) if resolve_backbone(b).requires] if self.cfg.zoo else []
            zoo = tuple(dict.fromkeys([*offline, *self.cfg.backbones])) or (str(self.base.backbone),)
            if len(zoo) == 1:
                self.trail.ranking = [{"backbone": zoo[0], "logme": None, "reason": "the only candidate"}]
            else:
                share = self._rank_share()
                self.say(f"ranking {len(zoo)} backbones on {len(share.train)} training {self._unit}")
                entry = self.trail.add(Entry("rank", "rank backbones (LogME)", "rank", "running", start=self._now()))
                settings = RankConfig(backbones=zoo, device=self.base.device, seed=self.cfg.seed)
                ranking = rank(share, settings, measures=("logme",))
                self.trail.ranking = [dataclasses.asdict(s) for s in ranking.scores]
                self.trail.update(entry.key, status="finished", end=self._now(), reason=ranking.reason,
                                  actual=self._now() - entry.start)  # fmt: skip
            self.trail.save()
        names = [str(r["backbone"]) for r in self.trail.ranking]
        return names[:TOP_BACKBONES]

    def _rank_share(self) -> DatasetSplits:
        limit = max(10 * len(self.splits.classes), int(self.clock.budget * RANK_ITEMS_PER_SECOND))
        if len(self.splits.train) <= limit:
            return self.splits
        train, _ = stratified_split(list(self.splits.train), 1 - limit / len(self.splits.train), self.cfg.seed)
        return dataclasses.replace(self.splits, train=tuple(train))

    # ------------------------------------------------------------------ runs

    def train(self, plan: Plan, steps: int, stage: str, predicted: float | None) -> RunRecord | None:
        """One run of ``plan`` (reused when finished, resumed when cut); ``None`` when no time is left."""
        name = plan.name(steps)
        key = f"{stage}:{plan.label}"
        record = self.records.get(name) or load_record(self.out / "runs" / name)
        if record is None:
            record, status, start = self._fresh(plan, steps, stage, predicted)
            if record is None:
                return None
        else:
            status = "finished"
            start = self.trail.entries[key].start if key in self.trail.entries else self._now()
        self.records[name], self.plans_of[name] = record, plan
        correct = record.predictions.correct()
        low, high = wilson(sum(correct), len(correct))
        old = self.trail.entries.get(key)
        self.trail.add(Entry(
            key, plan.label, stage, old.status if old and old.status not in ("running", "skipped") else status,
            old.reason if old else "", steps, predicted, record.train_seconds, start,
            old.end if old and old.end is not None else self._now(),
            record.val["accuracy"], low, high, self.rel(record.run_dir),
        ))  # fmt: skip
        self.say(
            f"{stage} · {plan.label}{f' · {steps} steps' if not plan.closed_form else ''}: "
            f"val {record.val['accuracy']:.3f} ({low:.3f}–{high:.3f}) in {record.train_seconds:.0f}s"
            + (f" (predicted {predicted:.0f}s)" if predicted is not None else "")
        )
        return record

    def _fresh(
        self, plan: Plan, steps: int, stage: str, predicted: float | None
    ) -> tuple[RunRecord | None, str, float]:
        """Train ``plan`` if its predicted cost fits before the hand-over: its record (``None``
        when skipped or cut at the hand-over), its status and the budget second it began."""
        key, start, run_dir = f"{stage}:{plan.label}", self._now(), self.out / "runs" / plan.name(steps)
        if predicted is not None and start + predicted > self.stop_at:
            self.trail.add(Entry(key, plan.label, stage, "skipped", "the time left is shorter than its "
                                 "predicted cost", steps, predicted, start=start))  # fmt: skip
            return None, "skipped", start
        self.trail.add(Entry(key, plan.label, stage, "running", "", steps, predicted, start=start))
        deadline = Deadline(self.clock, self.stop_at)
        run_cfg = plan.config(self.base, steps, steps_per_epoch(self.splits, self.base))
        try:
            record = run_and_record(self.splits, run_cfg, run_dir, None, callbacks=[deadline, StartWeights(run_dir)])
        except OutOfTime as cut:
            self.trail.update(key, status="stopped by the budget", end=self._now(), actual=self._now() - start,
                              reason=f"{cut}: not a candidate; a rerun with more --budget continues it")  # fmt: skip
            self.say(f"{stage} · {plan.label}: {cut}; the finish keeps its time")
            return None, "stopped by the budget", start
        return record, "stopped by the budget" if deadline.fired else "finished", start

    def _now(self) -> float:
        return round(self.clock.spent(), 2)

    def rel(self, path: str | Path) -> str:
        """``path`` (inside ``out``) as ``auto.json`` stores it: relative, so a copy is whole."""
        return Path(path).relative_to(self.out).as_posix()

    @property
    def _unit(self) -> str:
        return get_modality(self.splits.modality).unit

    # ------------------------------------------------------------------ 3. anytime

    def anytime(self, backbone: str, side: int | None) -> RunRecord:
        """The linear probe of the best-ranked backbone, at once in ``OUT/best``."""
        plan = Plan(backbone, with_role("probe").name, None, side)
        record = self.train(plan, 0, "anytime", None)
        assert record is not None
        if not (self.out / "best").is_dir():
            publish(Path(record.run_dir), self.out)
            self.say(f"first model in {self.out / 'best'} (the {plan.label} probe)")
        return record

    # ------------------------------------------------------------------ 4. the search

    def plans(self, backbones: Sequence[str], side: int | None) -> Schedule:
        """Time every ranked backbone's plans, their best first in turn (the ranking's second
        backbone is often the cheaper one, and its plans must not queue behind every plan of
        the first), and schedule them. Timing is budgeted like a run (:class:`TimingGate`): a
        plan is timed only while its timing fits, and a backbone only while the time left could
        run what timing it costs several times over; a plan not timed is not run."""
        if self.trail.schedule is not None:
            return Schedule.from_dict(self.trail.schedule)
        if note := left_out():
            self.say(escape(note))  # its install line's [text] is not markup
        start = self._now()
        device = resolve_device(self.base.device)
        found: list[list[Plan]] = []
        costs: dict[Plan, Cost] = {}
        per_epoch = steps_per_epoch(self.splits, self.base)
        most = max(10 * per_epoch, 100)
        fewest = min(max(FEWEST_STEPS, per_epoch), most)
        gate = TimingGate(self.clock, self.stop_at)
        timing = 0.0
        for backbone in backbones:
            if gate.refused or (found and self.stop_at - self._now() < TIMING_ROOM * timing):
                break
            began = self._now()
            found.append(self._candidates(backbone, side, backbones[0], [p for f in found for p in f]))
            costs |= measure(found[-1], self.splits, self.base, device, may_time=gate)
            gate.done()
            timing = max(timing, self._now() - began)
        gate.remember()
        plans = interleave(found)
        for plan in (p for p in plans if p not in costs):
            self.trail.add(Entry(f"plan:{plan.name(0)}", plan.label, "plan", "dropped",
                                 "no time left to time it", start=self._now()))  # fmt: skip
        gradient = [p for p in plans if not p.closed_form and p in costs]
        closed = [p for p in plans if p.closed_form and p in costs]
        chosen = schedule(gradient, costs, self.stop_at - self._now(), fewest, most)
        self.trail.schedule = {**chosen.to_dict(), "closed_form": [p.to_dict() for p in closed], "fewest": fewest,
                               "costs": {p.label: dataclasses.asdict(c) for p, c in costs.items()},
                               "timed_seconds": self._now() - start}  # fmt: skip
        for plan in gradient[len(chosen.plans) :]:
            self.trail.add(Entry(f"plan:{plan.name(0)}", plan.label, "plan", "dropped",
                                 "no room in the budget for one more plan", start=self._now()))  # fmt: skip
        self.trail.save()
        rungs = ", ".join(f"{k}×{s}" for k, s in zip(chosen.keep, chosen.steps, strict=True))
        self.say(
            f"{len(gradient)} plans timed, {len(chosen.plans)} fit; successive halving (plans×steps): "
            f"{rungs or 'nothing fits'}, predicted {chosen.predicted:.0f}s of {self.stop_at - start:.0f}s"
        )
        return chosen

    def _candidates(self, backbone: str, side: int | None, first: str, known: list[Plan]) -> list[Plan]:
        groups = len(layer_groups(create_backbone(backbone, pretrained=False)))
        found: list[Plan] = []
        for plan in candidates(backbone, groups, side):
            if plan.image_size == "auto":  # the probe at the backbone's own size
                plan = dataclasses.replace(plan, image_size=self.side(backbone, plan.strategy))
            if plan != Plan(first, with_role("probe").name, None, side) and plan not in known and plan not in found:
                found.append(plan)
        return found

    def side(self, backbone: str, strategy: str) -> int | None:
        """The input side ``--image-size auto`` gives this backbone and strategy (images only)."""
        modality = get_modality(self.splits.modality)
        cfg = self.base.replace(backbone=backbone, strategy=strategy, image_size="auto")
        return modality.input_side(lambda: create_backbone(backbone, pretrained=False), cfg, self.splits.train)

    def probes(self) -> None:
        """The closed-form probes the search left for last (the backbone's own input size)."""
        assert self.trail.schedule is not None
        costs = self.trail.schedule.get("costs", {})
        for values in self.trail.schedule.get("closed_form", []):
            plan = Plan(**values)
            predicted = Cost(**costs[plan.label]).seconds(0) if plan.label in costs else None
            self.train(plan, 0, "probe", predicted)

    def halve(self, chosen: Schedule) -> None:
        """Successive halving: each rung trains its plans afresh with more steps; the best go on."""
        assert self.trail.schedule is not None
        costs = self.trail.schedule.get("costs", {})
        fewest = int(self.trail.schedule.get("fewest", FEWEST_STEPS))
        scale: dict[str, float] = {}  # actual / predicted of each plan's last run
        alive = list(chosen.plans)
        for k, (steps, keep) in enumerate(zip(chosen.steps, chosen.keep, strict=True)):
            stage = f"rung {k + 1}"
            scored = []
            for plan in alive[:keep] if k == 0 else alive:
                cost = Cost(**costs[plan.label]) if plan.label in costs else None
                # a plan not run yet is assumed as far off its prediction as the runs so far
                factor = scale.get(plan.label, statistics.median(scale.values()) if scale else 1.0)
                budget = self._steps(stage, plan, steps, cost, factor, fewest)
                predicted = cost.seconds(budget) * factor if cost else None
                record = self.train(plan, budget, stage, predicted)
                if record is None:
                    continue
                if cost is not None:
                    scale[plan.label] = record.train_seconds / max(cost.seconds(budget), 1e-6)
                scored.append((plan, budget, record.val["accuracy"], record.predictions.correct()))
            if k + 1 == len(chosen.steps) or not scored:
                return
            nxt = chosen.keep[k + 1]
            alive, why = promote([(p, a, c) for p, _, a, c in scored], nxt, lambda a, b: serve_cost(a) < serve_cost(b))
            for plan, *_ in scored:
                promoted = plan in alive
                self.trail.update(f"{stage}:{plan.label}", status="promoted" if promoted else "dropped",
                                  reason=why if promoted else f"not among the {nxt} kept: {why}")  # fmt: skip

    def _steps(self, stage: str, plan: Plan, steps: int, cost: Cost | None, factor: float, fewest: int) -> int:
        """The rung's steps, or as many as the time left allows (at least ``fewest``); a rerun
        keeps the steps booked for a run it continues."""
        booked = self.trail.entries.get(f"{stage}:{plan.label}")
        if booked is not None and booked.steps:
            return booked.steps
        left = self.stop_at - self._now()
        if cost is None or cost.seconds(steps) * factor <= left or cost.step <= 0:
            return steps
        fitting = int((left - cost.fixed * factor) / (cost.step * factor))
        return fitting if fitting >= fewest else steps  # too few: the run is skipped, not cut to nothing


def serve_cost(plan: Plan) -> tuple[int, int]:
    """What a plan costs to run once shipped: the backbone's size and input side; every strategy
    of one backbone serves alike."""
    side = plan.image_size if isinstance(plan.image_size, int) else 0
    return _parameters(plan.backbone), side


@functools.cache
def _parameters(backbone: str) -> int:
    """Built once per backbone: promotion and the final choice compare plans many times."""
    return sum(p.numel() for p in create_backbone(backbone, pretrained=False).parameters())


__all__ = ["Deadline", "OutOfTime", "Search", "TimingGate", "hold_out", "serve_cost"]
