"""transferkit's conformance suite and tiny parts, public: check a strategy or modality of
your own as transferkit checks its own (see :mod:`transferkit.testing.checks`)."""

from transferkit.testing.checks import (
    CHECKS,
    TINY_RUN,
    Check,
    Setup,
    all_checks,
    builtin_setups,
    check_compare,
    check_fit_save_load_evaluate_predict,
    check_resume_bit_identical,
    parametrize_with_checks,
)
from transferkit.testing.tiny import (
    TINY_AUDIO_BACKBONE,
    TINY_IMAGE_BACKBONE,
    TINY_IMAGE_SIZE,
    TINY_TEXT_BACKBONE,
    make_image,
    make_images,
    make_text_table,
    make_tones,
    register_tiny_backbones,
)

__all__ = [
    "CHECKS",
    "TINY_AUDIO_BACKBONE",
    "TINY_IMAGE_BACKBONE",
    "TINY_IMAGE_SIZE",
    "TINY_RUN",
    "TINY_TEXT_BACKBONE",
    "Check",
    "Setup",
    "all_checks",
    "builtin_setups",
    "check_compare",
    "check_fit_save_load_evaluate_predict",
    "check_resume_bit_identical",
    "make_image",
    "make_images",
    "make_text_table",
    "make_tones",
    "parametrize_with_checks",
    "register_tiny_backbones",
]
