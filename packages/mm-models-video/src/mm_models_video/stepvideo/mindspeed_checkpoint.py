"""``--load DIR`` as MindSpeed-MM's Step-Video scripts pass it: a MindSpeed-MM checkpoint (``release/`` or
``iter_*/`` with ``mp_rank_*/model_optim_rng.pt``, any TP / PP layout) as the predictor's weights.

Its TP ranks are merged, its pipeline stages joined and its names mapped back to the release's (``stepvideo.convert``'s
rules), and the transformer the model.json describes loads them; the VAE and text encoders load from their own
``from_pretrained``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from mm_convert.load_cache import is_mindspeed_checkpoint
from mm_core.config import Config, wrap
from mm_core.errors import ConfigError, MMError


def split_load(model: Config) -> tuple[Config, str | None]:
    """``(model, checkpoint)``: when ``model.from_pretrained`` (``--load``) names a MindSpeed-MM checkpoint and the
    predictor has no weights of its own, that checkpoint and the model section without it (no release folder)."""
    loaded = Path(model.from_pretrained).expanduser() if model.from_pretrained else None
    if loaded is None or model.predictor.from_pretrained or not loaded.is_dir() or not is_mindspeed_checkpoint(loaded):
        return model, None
    return wrap({**model, "from_pretrained": None}), str(loaded)


def read_mindspeed_checkpoint(path: str | Path, heads: int) -> dict[str, torch.Tensor]:
    """The transformer's tensors of a MindSpeed-MM checkpoint of a ``heads``-head transformer, by the release's
    (mm's) names."""
    # convert.py imports schema and the transformer, which reach build.py's callers: imported here, not at the top
    from mm_convert.sora_commands import read_mm_checkpoint
    from mm_models_video.stepvideo.convert import MM_PIPELINE, StepVideoConverter, release_rules

    try:
        whole = read_mm_checkpoint(path, MM_PIPELINE, StepVideoConverter.tp_split, option_name="--load")
        tensors = release_rules(heads).to_hf(whole)
        return {name: tensors[name] for name in tensors}
    except MMError as exc:
        raise ConfigError(f"--load {path}: not a readable MindSpeed-MM Step-Video checkpoint: {exc}") from None
