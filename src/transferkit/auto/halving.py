"""Successive halving (Jamieson & Talwalkar 2016; the rung of Hyperband and ASHA): every plan
gets a small step budget, the best third gets three times as many steps, and so on until one
is left. :func:`schedule` fits the number of plans and the first rung's steps to the seconds
there are; :func:`promote` cuts a rung, the paired test deciding ties in favour of the cheaper.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from transferkit.auto.plans import Cost, Plan
from transferkit.workflows.verdict import ALPHA, mcnemar

ETA = 3  # the share a rung keeps is 1/ETA; its survivors get ETA times the steps


@dataclass
class Schedule:
    """Which plans start, and each rung's step budget and size (``keep[k]`` plans run ``steps[k]``)."""

    plans: list[Plan]
    steps: list[int] = field(default_factory=list)
    keep: list[int] = field(default_factory=list)
    predicted: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"plans": [p.to_dict() for p in self.plans], "steps": self.steps, "keep": self.keep,
                "predicted": self.predicted}  # fmt: skip

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Schedule:
        return cls([Plan(**p) for p in values["plans"]], list(values["steps"]), list(values["keep"]),
                   float(values["predicted"]))  # fmt: skip


def rungs(n: int, first: int, most: int) -> tuple[list[int], list[int]]:
    """Steps and plan count per rung for ``n`` plans starting at ``first`` steps (capped at ``most``)."""
    steps: list[int] = []
    keep: list[int] = []
    while not steps or (keep[-1] > 1 and steps[-1] < most):  # one plan left, or no more steps to give
        k = len(steps)
        steps.append(min(first * ETA**k, most))
        keep.append(math.ceil(n / ETA**k))
    return steps, keep


def predicted_seconds(plans: Sequence[Plan], costs: dict[Plan, Cost], steps: list[int], keep: list[int]) -> float:
    """Assumes the costliest plans survive each cut: a prediction that errs long, not short."""
    total = 0.0
    for rung_steps, count in zip(steps, keep, strict=True):
        total += sum(sorted((costs[p].seconds(rung_steps) for p in plans), reverse=True)[:count])
    return total


def schedule(plans: Sequence[Plan], costs: dict[Plan, Cost], seconds: float, fewest: int, most: int) -> Schedule:
    """The most plans (in their order of promise) whose halving fits ``seconds`` with a first rung
    of at least ``fewest`` steps; within that, the longest first rung. None fit: an empty schedule."""
    for n in range(len(plans), 0, -1):
        chosen = list(plans[:n])
        best: Schedule | None = None
        low, high = fewest, most
        while low <= high:  # the longest first rung that fits (the cost grows with it)
            first = (low + high) // 2
            steps, keep = rungs(n, first, most)
            total = predicted_seconds(chosen, costs, steps, keep)
            if total <= seconds:
                best, low = Schedule(chosen, steps, keep, total), first + 1
            else:
                high = first - 1
        if best is not None:
            return best
    return Schedule([])


def promote(
    scored: Sequence[tuple[Plan, float, list[int]]], count: int, cheaper: Callable[[Plan, Plan], bool]
) -> tuple[list[Plan], str]:
    """The ``count`` best (plan, accuracy, per-item correctness) by accuracy; at the cut, a plan
    left out that the paired test cannot tell from the last one kept, and that is cheaper, takes
    its place. Also the reason, for the decision trail."""
    ordered = sorted(scored, key=lambda s: -s[1])
    kept, left = list(ordered[:count]), list(ordered[count:])
    if not kept or not left:
        return [s[0] for s in kept], "every plan goes on"
    last = kept[-1]
    ties = [s for s in left if _tie(s[2], last[2]) and cheaper(s[0], last[0])]
    if ties:
        kept[-1] = ties[0]
        return [s[0] for s in kept], f"{ties[0][0].label} ties {last[0].label} by the paired test and is cheaper"
    return [s[0] for s in kept], f"the best {count} by validation accuracy"


def _tie(a: list[int], b: list[int]) -> bool:
    return bool(a) and len(a) == len(b) and mcnemar(a, b) >= ALPHA
