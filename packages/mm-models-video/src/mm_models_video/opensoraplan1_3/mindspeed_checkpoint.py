"""A MindSpeed-MM OpenSoraPlan checkpoint (``release/`` or ``iter_*/`` with ``mp_rank_*``, an FSDP2 (DCP) one, or one
state-dict file in its names) as the predictor's weights.

``--load`` in a MindSpeed-MM launch script names such a checkpoint (as ``mm-convert OpenSoraPlanConverter hf_to_mm``
writes it): its TP ranks are merged, its pipeline stages joined and its names mapped back to the release's, and the
transformer the model.json describes loads them.
"""

from __future__ import annotations

from pathlib import Path

import torch

from mm_convert import TensorSource
from mm_core.errors import ConfigError, MMError


def read_mindspeed_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The transformer's tensors of a MindSpeed-MM checkpoint, by the release's (mm's) names."""
    # convert.py imports build.py, which reads checkpoints through this module: imported here, not at the top
    from mm_convert.sora_commands import read_mm_checkpoint
    from mm_models_video.opensoraplan1_3.convert import MM_PIPELINE, RELEASE_TO_MM, tp_split

    try:
        tensors = RELEASE_TO_MM.to_hf(read_mm_checkpoint(path, MM_PIPELINE, tp_split, option_name="--load"))
        return {name: tensors[name] for name in tensors}
    except MMError as exc:
        raise ConfigError(f"--load {path}: not a readable MindSpeed-MM OpenSoraPlan checkpoint: {exc}") from None


MINDSPEED_BLOCKS = "videodit_sparse_blocks."


def release_names(tensors: dict[str, torch.Tensor], where: str) -> dict[str, torch.Tensor]:
    """A state dict in MindSpeed-MM's names (``videodit_sparse_blocks.*``, as its inference model.json's
    predictor.from_pretrained .pth holds) by the release's names; any other state dict as it is."""
    if not any(name.startswith(MINDSPEED_BLOCKS) for name in tensors):
        return tensors
    from mm_models_video.opensoraplan1_3.convert import RELEASE_TO_MM

    source = TensorSource({k: v.to("meta") for k, v in tensors.items()}, tensors.__getitem__, where)
    try:
        renamed = RELEASE_TO_MM.to_hf(source)
        return {name: renamed[name] for name in renamed}
    except MMError as exc:
        raise ConfigError(f"{where}: not an OpenSoraPlan transformer in MindSpeed-MM's names: {exc}") from None
