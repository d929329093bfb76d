"""Which parameters train in a phase, and the BatchNorm policy — decided here for every caller.

BatchNorm policy, the same in every phase of every workflow:
- a BatchNorm layer whose parameters are frozen runs in eval mode, so its running
  statistics never change while it is frozen; with the whole backbone frozen, the whole
  backbone runs in eval mode;
- an unfrozen BatchNorm layer trains its scale and shift, and by default (``bn_update=False``)
  still normalises with the pre-trained statistics. Re-estimating them from a small,
  different dataset shifts every feature the head was trained on (Keras' fine-tuning guide
  gives the same advice); ``bn_update=True`` lets them update, as fastai does. Training
  from scratch always updates them: random-init statistics mean nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from transferkit.layers import LayerGroup, is_adapter
from transferkit.model import TransferModel
from transferkit.strategies import Phase


def freeze_for_phase(model: TransferModel, groups: Sequence[LayerGroup], phase: Phase) -> None:
    """Make exactly the head and the phase's top backbone groups trainable."""
    trainable = {name for i in phase.trainable_groups(len(groups)) for name in groups[i].param_names}
    for name, param in model.backbone.named_parameters():
        param.requires_grad_(name in trainable or (phase.adapters and is_adapter(name)))
    for param in model.head.parameters():
        param.requires_grad_(True)


def set_train_mode(model: nn.Module, bn_update: bool = False) -> None:
    """``model.train()``, except BatchNorm as the module docstring says. ``model`` is a
    TransferModel, a head alone (features cached) or a backbone's top (activations cached)."""
    model.train()
    if isinstance(model, TransferModel) and not any(p.requires_grad for p in model.backbone.parameters()):
        model.backbone.eval()
        return
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            own = list(module.parameters(recurse=False))
            frozen = not any(p.requires_grad for p in own)
            if frozen or not bn_update:
                module.eval()


def count_params(module: nn.Module, trainable: bool | None = None) -> int:
    return sum(p.numel() for p in module.parameters() if trainable is None or p.requires_grad == trainable)


def bn_update(bn_stats: str, pretrained: bool) -> bool:
    """Whether unfrozen BatchNorm re-estimates its statistics (see the module docstring)."""
    return bn_stats == "update" or not pretrained
