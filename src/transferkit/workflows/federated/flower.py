"""Flower, an optional extra (`pip install 'transferkit[federated]'`): every Flower name the
federated workflow uses, imported in this one place, so a missing Flower is one clear error.

Only Flower's current app API: a ``ServerApp`` and a ``ClientApp`` exchanging ``Message``s,
run by its simulation engine or by its deployment engine (SuperLink and SuperNodes); and, for
secure aggregation only (``secure.py``), the SecAgg+ pieces of its legacy workflow API, which
speak Flower's legacy fit records."""

from transferkit.extras import MissingExtraError, require

require("flwr", "federated training")  # a missing Flower: one line naming the extra
try:
    from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
    from flwr.client.mod import secaggplus_mod
    from flwr.clientapp import ClientApp
    from flwr.clientapp.typing import ClientAppCallable
    from flwr.common import Code, FitIns, FitRes, Parameters, Status, ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS as SECAGG_CONFIGS
    from flwr.compat.common import recorddict_compat as legacy_records
    from flwr.server.client_manager import ClientManager
    from flwr.server.client_proxy import ClientProxy
    from flwr.server.compat.legacy_context import LegacyContext
    from flwr.server.strategy import Strategy as LegacyStrategy
    from flwr.server.workflow import SecAggPlusWorkflow
    from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
    from flwr.server.workflow.constant import Key as WorkflowKey
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import (
        Bulyan,
        DifferentialPrivacyServerSideFixedClipping,
        FedAdam,
        FedAvg,
        FedMedian,
        FedProx,
        FedTrimmedAvg,
        Krum,
        Strategy,
    )
except ImportError as exc:  # pragma: no cover - Flower found, but one of its own imports fails
    raise MissingExtraError("flwr", "federated", "federated training", str(exc)[:100]) from exc

__all__ = [
    "MAIN_CONFIGS_RECORD",
    "MAIN_PARAMS_RECORD",
    "SECAGG_CONFIGS",
    "Array",
    "ArrayRecord",
    "Bulyan",
    "ClientApp",
    "ClientAppCallable",
    "ClientManager",
    "ClientProxy",
    "Code",
    "ConfigRecord",
    "Context",
    "DifferentialPrivacyServerSideFixedClipping",
    "Error",
    "FedAdam",
    "FedAvg",
    "FedMedian",
    "FedProx",
    "FedTrimmedAvg",
    "FitIns",
    "FitRes",
    "Grid",
    "Krum",
    "LegacyContext",
    "LegacyStrategy",
    "Message",
    "MetricRecord",
    "Parameters",
    "RecordDict",
    "SecAggPlusWorkflow",
    "ServerApp",
    "Status",
    "Strategy",
    "WorkflowKey",
    "legacy_records",
    "ndarrays_to_parameters",
    "parameters_to_ndarrays",
    "secaggplus_mod",
]
