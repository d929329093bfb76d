"""The server's side of a run: the global model and its central score, the result, saving it."""

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch.utils.data import DataLoader

from transferkit.errors import TransferkitError
from transferkit.features import extract_features, feature_batches, feature_settings
from transferkit.loaders import sample_loader
from transferkit.metrics import Scores
from transferkit.modalities import DatasetSplits, Sample, get_modality
from transferkit.model import TransferModel, save_model
from transferkit.ownership import claim_output_dir, output_lock, seal
from transferkit.paths import atomic_write_text
from transferkit.pipeline import SingleLabel, prepare_model
from transferkit.plan import batches
from transferkit.runtime import seed_everything
from transferkit.scoring import evaluate
from transferkit.strategies import Phase, get_strategy
from transferkit.workflows.federated.client import record_bytes, to_record
from transferkit.workflows.federated.config import FederatedConfig
from transferkit.workflows.federated.secure import SecureGrid
from transferkit.workflows.federated.server import PhasedStrategy, RoundRecord


@dataclass
class FederatedResult:
    config: FederatedConfig
    rounds: list[RoundRecord]
    classes: tuple[str, ...]
    client_sizes: list[int]
    full_model_bytes: int  # one copy of every weight and buffer, serialised as Flower would
    seconds: float
    model: TransferModel | None = None
    run_dir: Path | None = None

    @property
    def bytes_total(self) -> int:
        return sum(r.bytes_down + r.bytes_up for r in self.rounds)

    @property
    def full_model_bytes_total(self) -> int:
        """What the same rounds would have sent with the whole model going both ways."""
        return sum(2 * r.clients_ok * self.full_model_bytes for r in self.rounds)

    def summary(self) -> dict[str, Any]:
        final = self.rounds[-1] if self.rounds else None
        return {
            "partition": self.config.partition,
            "clients": self.config.clients,
            "client_sizes": self.client_sizes,
            "final_accuracy": final.accuracy if final else None,
            "final_macro_f1": final.macro_f1 if final else None,
            "bytes_total": self.bytes_total,
            "full_model_bytes_total": self.full_model_bytes_total,
            "seconds": self.seconds,
            "rounds": [asdict(r) for r in self.rounds],
        }


class Coordinator:
    """The server's side: the global model, the central validation split and its scorer, and
    the strategy that runs the rounds over them (the same in a simulation and a deployment)."""

    def __init__(self, splits: DatasetSplits, cfg: FederatedConfig, console: Console | None) -> None:
        base = cfg.base
        seed_everything(base.seed)
        self.model, _ = prepare_model(base, get_strategy(base.strategy), SingleLabel(len(splits.classes)))
        self.modality = get_modality(splits.modality)
        self.pre = self.modality.preprocessing(self.model.backbone, base)
        self.batches = batches(base, self.modality, self.pre, torch.device("cpu"))
        self.splits, self.cfg, self.console = splits, cfg, console
        self._val_features: DataLoader[Any] | None = None
        self._val: list[Sample] | None = None  # the validation items that can be read
        self.strategy = PhasedStrategy(cfg, self.model, splits.classes, self.score, console)
        state = self.model.state_dict()
        self.full_model_bytes = record_bytes(to_record(list(state), [v.detach().cpu().numpy() for v in state.values()]))
        self.started = time.perf_counter()

    def score(self, model: TransferModel, phase: Phase) -> Scores:
        device = torch.device("cpu")
        n = len(self.splits.classes)
        if self._val is None:  # checked once: an unreadable item is skipped, never replaced by another
            self._val = self.modality.scorable(self.splits.val)[0]
        if phase.head_only:  # frozen backbone: score the head on validation features computed once
            if self._val_features is None:
                drawn = self.batches
                features = extract_features(
                    model.backbone, self.modality, self._val, [drawn.eval_transform], batch_size=drawn.size,
                    device=device, cache_dir=drawn.cache, settings=feature_settings(drawn.backbone, self.pre),
                )  # fmt: skip
                self._val_features = feature_batches(features, drawn.size)
            return evaluate(model.head, self._val_features, n, device)
        loader = sample_loader(self.modality, self._val, self.batches.eval_transform, self.batches, device)
        return evaluate(model, loader, n, device)

    def run(self, grid: Any, round_timeout: float | None = None, largest: int | None = None) -> None:
        """The rounds, driven by Flower's ``Strategy.start`` on ``grid`` (a ServerApp's main);
        ``largest``: the biggest client's item count, where the server knows it (a simulation)."""
        self.started = time.perf_counter()
        strategy = self.strategy
        if self.cfg.secure_aggregation:  # the train exchange becomes Flower's SecAgg+ protocol
            grid = SecureGrid(grid, largest)
        strategy.start(
            grid, strategy.initial_arrays(), num_rounds=self.cfg.rounds, timeout=round_timeout or 24 * 3600.0,
            evaluate_fn=strategy.evaluate,
        )  # fmt: skip

    def finish(self, client_sizes: list[int] | None, out: str | Path | None) -> FederatedResult:
        """The federation's result, saved to ``out``; an error if it stopped short. Without
        ``client_sizes`` (a deployment), the item counts the clients' replies gave."""
        done = len(self.strategy.records)
        if done < self.cfg.rounds:
            raise TransferkitError(f"the federation stopped after {done} of {self.cfg.rounds} rounds; see Flower's log")
        if not any(r.clients_ok for r in self.strategy.records):
            raise TransferkitError("no client trained in any round (their reasons are above); nothing saved")
        if client_sizes is None:
            client_sizes = list(self.strategy.client_sizes.values())
        result = FederatedResult(
            self.cfg, self.strategy.records, self.splits.classes, client_sizes, self.full_model_bytes,
            time.perf_counter() - self.started, self.model,
        )  # fmt: skip
        if out is not None:
            result.run_dir = save_federated(out, result, self)
        return result


def save_federated(out: str | Path, result: FederatedResult, server: Coordinator) -> Path:
    """The global model as `fit` saves one (so `evaluate` and `predict` read it) plus the rounds."""
    out = Path(out)
    cfg = result.config
    final = result.rounds[-1]
    card = {
        "backbone": cfg.base.backbone,
        "strategy": cfg.base.strategy,
        "pretrained": True,
        "classes": list(result.classes),
        "preprocessing": server.pre.to_dict(),
        "head": {"hidden": cfg.base.hidden, "dropout": cfg.base.dropout},
        "metrics": {"val": {"accuracy": final.accuracy, "macro_f1": final.macro_f1, "loss": final.loss}},
        "fit_config": cfg.base.to_dict(),
        "federated": cfg.to_dict(),
        "train_seconds": result.seconds,
    }
    claim_output_dir(out, "run", "--out")  # checked again: it may have changed meanwhile
    with output_lock(out):
        save_model(out, server.model, card)
        atomic_write_text(out / "rounds.json", json.dumps(result.summary(), indent=2))
        seal(out, "run")
    return out
