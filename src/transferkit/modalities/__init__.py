"""Modalities: what differs between images and texts, behind one small protocol.

A new modality is one new module implementing :class:`Modality` plus one line below.
Registering here also registers its backbones (offline zoo and name resolvers).
"""

from transferkit.modalities.audio import AudioModality
from transferkit.modalities.base import (
    Modality,
    Preprocessing,
    detect_modality,
    get_modality,
    modality_names,
    register_modality,
    registered_modalities,
)
from transferkit.modalities.common import MISSING, DatasetSplits, Sample, Skipped, stratified_split
from transferkit.modalities.image import ImageModality
from transferkit.modalities.text import TextModality

# Registration order breaks ties in detect_modality: images first.
register_modality(ImageModality())
register_modality(TextModality())
register_modality(AudioModality())

__all__ = [
    "MISSING",
    "DatasetSplits",
    "Modality",
    "Preprocessing",
    "Sample",
    "Skipped",
    "detect_modality",
    "get_modality",
    "modality_names",
    "register_modality",
    "registered_modalities",
    "stratified_split",
]
