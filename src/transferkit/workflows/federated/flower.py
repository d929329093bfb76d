"""Flower, an optional extra (`pip install 'transferkit[federated]'`): every Flower name the
federated workflow uses, imported in this one place, so a missing Flower is one clear error.

Only Flower's current app API: a ``ServerApp`` and a ``ClientApp`` exchanging ``Message``s,
run by its simulation engine or by its deployment engine (SuperLink and SuperNodes)."""

from transferkit.errors import TransferkitError

try:
    from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import (
        DifferentialPrivacyServerSideFixedClipping,
        FedAdam,
        FedAvg,
        FedProx,
        Strategy,
    )
except ImportError as exc:  # pragma: no cover - the test extra installs flwr
    raise TransferkitError("federated training needs Flower: pip install 'transferkit[federated]'") from exc

__all__ = [
    "Array",
    "ArrayRecord",
    "ClientApp",
    "ConfigRecord",
    "Context",
    "DifferentialPrivacyServerSideFixedClipping",
    "Error",
    "FedAdam",
    "FedAvg",
    "FedProx",
    "Grid",
    "Message",
    "MetricRecord",
    "RecordDict",
    "ServerApp",
    "Strategy",
]
