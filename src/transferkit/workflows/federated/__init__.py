"""Federated fine-tuning with Flower: the images stay with their owners, only trainable weights travel.

Each round the server sends the weights the round's phase trains (the head, plus any
unfrozen backbone groups) to the sampled clients; each client trains them for
``local_epochs`` on its own images with the same strategy plans, freezing and loop as
``fit``, and sends them back; Flower's own strategy (FedAvg, FedProx or FedAdam) aggregates
them, weighted by example counts. Frozen weights never move: every party builds the same
pre-trained backbone locally. The server scores the global model on a central validation
split after every round.

Two-phase strategies run as phases of rounds (head rounds, then fine-tune rounds); the set
of travelling weights changes at the boundary, so :class:`PhasedStrategy` keeps the global
model and starts a fresh Flower strategy per phase (as ``fit`` starts a fresh optimizer).

The server and client logic live once, in Flower's ``ServerApp`` and ``ClientApp``
(:mod:`.apps`): Flower's simulation engine runs them on one machine (``simulate``), its
deployment engine (a SuperLink, SuperNodes, ``flwr run``) across sites (``serve``, ``join``).
Everything a client needs to know arrives with each round's instructions (the ``fit``
config, the phase, the learning-rate scale), so a real client is started with nothing but
its images and the server's address.
"""

from __future__ import annotations

import importlib
from typing import Any

# Names this package offers, by the module that holds each. Loaded on first use (PEP 562): the
# command line reads the options of `config` and `compression` without importing Flower.
_WHERE = {
    "client_app": "apps", "server_app": "apps", "train_reply": "apps",
    "TransferClient": "client",
    "app_for": "deployment", "join": "deployment", "serve": "deployment", "write_app": "deployment",
    "Coordinator": "result", "FederatedResult": "result",
    "centralised": "run", "federated_report": "run", "simulate": "run",
    "PhasedStrategy": "server", "RoundRecord": "server",
    "AGGREGATORS": "config", "PARTITIONS": "config", "FederatedConfig": "config",
    "federated_strategies": "config", "partition": "config", "replace_config": "config",
}  # fmt: skip

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
