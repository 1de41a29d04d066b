"""video_dpo's config keys: MindSpeed-MM's posttrain model.json ``dpo`` block and its DPO launch flags.

``model.dpo`` is the posttrain model.json's block (histogram_path, weight_alpha, weight_beta, loss_beta);
``training.dpo_*`` and ``training.pref_ftx`` are its launch flags (``--dpo-beta``, ``--dpo-loss-type``,
``--dpo-label-smoothing``, ``--pref-ftx``); ``training.load`` (``--load``) starts actor and reference from an
mm checkpoint.
"""

from __future__ import annotations

from typing import Any

from mm_core.config import Config
from mm_core.errors import ConfigError

LOSS_TYPES = ("sigmoid",)

DPO: dict[str, Any] = {"histogram_path": None, "weight_alpha": 0.0, "weight_beta": None, "loss_beta": 2000.0}

TRAINING: dict[str, Any] = {
    "dpo_beta": 0.1,
    "dpo_loss_type": "sigmoid",
    "dpo_label_smoothing": 0.0,
    "pref_ftx": 0.0,
    "load": None,
}


def check(config: Config) -> None:
    """A ConfigError for a DPO setting out of range or a histogram the pair weights need but cannot have."""
    training, dpo = config.training, config.model.dpo
    if training.dpo_loss_type not in LOSS_TYPES:
        raise ConfigError(f"training.dpo_loss_type must be one of {', '.join(LOSS_TYPES)}, "
                          f"got {training.dpo_loss_type!r}")
    if not 0.0 <= training.dpo_label_smoothing <= 0.5:
        raise ConfigError(f"training.dpo_label_smoothing must be between 0 and 0.5 (cDPO), "
                          f"got {training.dpo_label_smoothing}")
    if dpo.weight_alpha and not dpo.histogram_path:
        raise ConfigError(f"model.dpo.weight_alpha {dpo.weight_alpha} weights pairs by the score histogram: set "
                          "model.dpo.histogram_path to the generator's video_score_histogram.json (or weight_alpha 0)")
    if dpo.weight_beta is not None and dpo.weight_beta <= 0:
        raise ConfigError(f"model.dpo.weight_beta must be positive (or null: max_num / total_num), "
                          f"got {dpo.weight_beta}")
