"""Flower, an optional extra (`pip install 'transferkit[federated]'`): every Flower name the
federated workflow uses, imported in this one place, so a missing Flower is one clear error."""

from transferkit.errors import TransferkitError

try:
    from flwr.app import Array, ArrayRecord
    from flwr.client import NumPyClient
    from flwr.common import FitIns, FitRes, Parameters, ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.server import ServerConfig
    from flwr.server.client_manager import ClientManager
    from flwr.server.client_proxy import ClientProxy
    from flwr.server.strategy import FedAdam, FedAvg, FedProx, Strategy
except ImportError as exc:  # pragma: no cover - the test extra installs flwr
    raise TransferkitError("federated training needs Flower: pip install 'transferkit[federated]'") from exc

__all__ = [
    "Array",
    "ArrayRecord",
    "ClientManager",
    "ClientProxy",
    "FedAdam",
    "FedAvg",
    "FedProx",
    "FitIns",
    "FitRes",
    "NumPyClient",
    "Parameters",
    "ServerConfig",
    "Strategy",
    "ndarrays_to_parameters",
    "parameters_to_ndarrays",
]
