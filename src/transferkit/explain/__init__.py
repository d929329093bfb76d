"""What a model looked at: class-activation maps (images), token attributions (text), the
attribution over the spectrogram (audio) — ``transferkit explain`` and the compare report."""

from transferkit.explain.cam import METHODS, class_activation_maps, target_layer
from transferkit.explain.run import explain

__all__ = ["METHODS", "class_activation_maps", "explain", "target_layer"]
