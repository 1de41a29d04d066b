"""``--load DIR`` as MindSpeed-MM's Wan2.1 scripts pass it: a diffusers ``transformer/`` folder, or that folder
converted in place by ``mm-convert WanConverter hf_to_mm`` (``latest_checkpointed_iteration.txt``, ``release/`` or
``iter_*/`` with ``mp_rank_*``).

The transformer loads from DIR (a MindSpeed-MM checkpoint is converted once, by Wan21Converter's ``mm_to_hf``, into a
diffusers folder in the cache, keyed by its files); the VAE, text encoder and tokenizer load from where the model
section says, else from DIR's parent when it is a diffusers pipeline folder (model_index.json).
"""

from __future__ import annotations

import json
from pathlib import Path

from mm_convert.load_cache import converted_once, is_mindspeed_checkpoint
from mm_core.config import Config
from mm_core.errors import ConfigError, MMError

PIPELINE_INDEX = "model_index.json"


def is_transformer_folder(path: Path) -> bool:
    """Whether ``path`` is a diffusers WanTransformer3DModel folder (config.json naming that class)."""
    config = path / "config.json"
    if not config.is_file():
        return False
    try:
        return json.loads(config.read_text()).get("_class_name") == "WanTransformer3DModel"
    except (OSError, ValueError):
        return False


def resolve_load(model: Config, cache: Path) -> None:
    """Point ``model.predictor.from_pretrained`` at the transformer ``model.from_pretrained`` names when that is a
    transformer folder or a MindSpeed-MM checkpoint (converted into ``cache``), and ``model.from_pretrained`` at its
    pipeline folder (or nothing)."""
    if not model.from_pretrained:
        return
    path = Path(model.from_pretrained).expanduser()
    if not path.exists() and str(model.from_pretrained).startswith((".", "/", "~")):
        raise ConfigError(f"model.from_pretrained (--load) {model.from_pretrained} does not exist: give a diffusers "
                          "Wan2.1 folder, its transformer/ folder or a MindSpeed-MM checkpoint")
    if not path.is_dir() or (path / PIPELINE_INDEX).is_file():
        return
    if is_mindspeed_checkpoint(path):
        transformer = as_diffusers_transformer(path, cache)
    elif is_transformer_folder(path):
        transformer = path
    else:
        return
    if not model.predictor.from_pretrained:
        model.predictor["from_pretrained"] = str(transformer)
    model["from_pretrained"] = str(path.parent) if (path.parent / PIPELINE_INDEX).is_file() else None


def as_diffusers_transformer(checkpoint: Path, cache: Path) -> Path:
    """``checkpoint`` (with the config.json of the diffusers transformer it came from) as a diffusers folder in
    ``cache``; rank 0 converts, the others wait."""
    if not (checkpoint / "config.json").is_file():
        raise ConfigError(f"--load {checkpoint} is a MindSpeed-MM checkpoint without config.json: mm needs the "
                          "diffusers transformer's config.json beside it (mm-convert WanConverter hf_to_mm converts "
                          "the transformer/ folder in place, which keeps it)")
    return converted_once(checkpoint, cache, "wan2_1-from-mindspeed", lambda target: _convert(checkpoint, target))


def _convert(checkpoint: Path, target: Path) -> None:
    # convert.py imports build.py, which reaches this module through plugin.py: imported here, not at the top
    from mm_models_video.wan2_1.convert import MmToHfOptions, Wan21Converter

    try:
        Wan21Converter().mm_to_hf(MmToHfOptions(source_path=checkpoint, ckpt_path=checkpoint, target_path=target))
    except MMError as exc:
        raise ConfigError(f"--load {checkpoint}: not a readable MindSpeed-MM Wan2.1 checkpoint: {exc}") from None
