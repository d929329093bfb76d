"""A third-party strategy in one file, as a user writes it: the head alone for an epoch, then the
top layer group. It answers for itself — compared by default, federated, searched by `auto` —
and nothing else in transferkit changes for it (tests/test_toy_strategy.py). Processes
transferkit starts find it through ``TRANSFERKIT_PLUGINS=tests.toy_strategy``."""

from __future__ import annotations

from transferkit.strategies import Phase, PlanOptions, Searched, Strategy, register_strategy

NAME = "toy-head-then-top"


def _plan(cfg: PlanOptions) -> tuple[Phase, ...]:
    return (
        Phase("head", 1, 0, cfg.lr, 0.0),
        Phase("top", cfg.epochs - 1, 1, cfg.backbone_lr, cfg.backbone_lr),
    )


TOY = register_strategy(
    Strategy(
        NAME,
        "The head for one epoch, then the top layer group as well.",
        pretrained=True,
        plan=_plan,
        default_unfreeze=1,
        min_epochs=2,
        compared=True,
        federates=True,
        searched=(Searched(0),),  # auto's first plan
    )
)
