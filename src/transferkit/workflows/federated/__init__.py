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

from transferkit.workflows.federated.apps import client_app, server_app, train_reply
from transferkit.workflows.federated.client import TransferClient
from transferkit.workflows.federated.deployment import app_for, join, serve, write_app
from transferkit.workflows.federated.result import Coordinator, FederatedResult
from transferkit.workflows.federated.run import centralised, federated_report, simulate
from transferkit.workflows.federated.server import PhasedStrategy, RoundRecord
from transferkit.workflows.federated_config import (
    AGGREGATORS,
    PARTITIONS,
    FederatedConfig,
    federated_strategies,
    partition,
    replace_config,
)

__all__ = [
    "AGGREGATORS",
    "PARTITIONS",
    "Coordinator",
    "FederatedConfig",
    "FederatedResult",
    "PhasedStrategy",
    "RoundRecord",
    "TransferClient",
    "app_for",
    "centralised",
    "client_app",
    "federated_report",
    "federated_strategies",
    "join",
    "partition",
    "replace_config",
    "serve",
    "server_app",
    "simulate",
    "train_reply",
    "write_app",
]
