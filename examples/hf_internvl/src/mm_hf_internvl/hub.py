"""The migration guide's three steps: an adapted model class, a ModelHub registering it, a loader using it."""

from __future__ import annotations

from typing import Any

import torch
from transformers import InternVLConfig, InternVLForConditionalGeneration, PreTrainedModel

from mm_core.config import Config
from mm_core.errors import ConfigError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class FSDP2Mixin:
    """What MindSpeed-MM's FSDP2Mixin gives a transformers model, the mm way: the model names its FSDP2 units.

    mm's FSDP2 engine does the sharding (driven by ``parallel.fsdp2``); a model only says which modules
    are units when the config names none: here every module of a class transformers never splits
    across devices (``_no_split_modules``: decoder layers, vision encoder layers).
    """

    def fsdp_modules(self: PreTrainedModel) -> list[str]:
        """Module path patterns, one per layer list (``model.language_model.layers.{*}``) or module."""
        whole = set(self._no_split_modules or ())
        patterns = []
        for path, module in self.named_modules():
            if type(module).__name__ in whole:
                parent, _, last = path.rpartition(".")
                pattern = f"{parent}.{{*}}" if last.isdigit() else path
                if pattern not in patterns:
                    patterns.append(pattern)
        return patterns


class InternVLForTraining(InternVLForConditionalGeneration, FSDP2Mixin):
    """Step 1: transformers' InternVL with the FSDP2 mixin; its weights and checkpoints are unchanged."""


# Step 2: the ModelHub; model.model_id picks the class. Add your own transformers models here.
MODEL_HUB: dict[str, type[PreTrainedModel]] = {"internvl": InternVLForTraining}
CONFIGS = {"internvl": InternVLConfig}


def model_class(model: Config) -> type[PreTrainedModel]:
    """The hub's class for ``model.model_id``."""
    if model.model_id not in MODEL_HUB:
        raise ConfigError(f"model.model_id {model.model_id!r} is not in the model hub (known: {', '.join(MODEL_HUB)})")
    return MODEL_HUB[model.model_id]


def model_config(model: Config) -> Any:
    """The transformers config: the pretrained folder's config.json, else ``model.config`` (e.g. a tiny size)."""
    model_class(model)
    if model.from_pretrained:
        try:
            return CONFIGS[model.model_id].from_pretrained(model.from_pretrained)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"model.from_pretrained: cannot read a config from {model.from_pretrained}: "
                              f"{str(exc).strip().splitlines()[0]}") from None
    return CONFIGS[model.model_id](**model.config.to_dict())


def load_model(model: Config) -> PreTrainedModel:
    """Step 3 (the guide's TransformersModel): build the hub's class from pretrained weights or from its config."""
    cls = model_class(model)
    if model.dtype not in DTYPES:
        raise ConfigError(f"model.dtype must be one of {', '.join(DTYPES)}, got {model.dtype!r}")
    config = model_config(model)
    if model.from_pretrained:
        return cls.from_pretrained(model.from_pretrained, config=config, dtype=DTYPES[model.dtype])
    return cls(config).to(DTYPES[model.dtype])
