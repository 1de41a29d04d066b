"""A MindSpeed-MM OpenSoraPlan checkpoint (``release/`` or ``iter_*/`` with ``mp_rank_*``) as the predictor's weights.

``--load`` in a MindSpeed-MM launch script names such a checkpoint (as ``mm-convert OpenSoraPlanConverter hf_to_mm``
writes it): its TP ranks are merged, its pipeline stages joined and its names mapped back to the release's, and the
transformer the model.json describes loads them.
"""

from __future__ import annotations

from pathlib import Path

import torch

from mm_convert import read_megatron
from mm_convert.megatron_layout import ITERATION_FILE
from mm_convert.tp_split import merge_tp
from mm_core.errors import ConfigError, MMError


def is_mindspeed_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` is a MindSpeed-MM (Megatron) checkpoint folder rather than the release's layout."""
    path = Path(path).expanduser()
    return (path / ITERATION_FILE).is_file() or (path / "release").is_dir() or any(path.glob("iter_*/mp_rank_*"))


def read_mindspeed_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The transformer's tensors of a MindSpeed-MM checkpoint, by the release's (mm's) names."""
    # convert.py imports build.py, which reads checkpoints through this module: imported here, not at the top
    from mm_models_video.opensoraplan1_3.convert import MM_PIPELINE, RELEASE_TO_MM, tp_split

    try:
        tensors = RELEASE_TO_MM.to_hf(merge_tp(read_megatron(path, MM_PIPELINE).sources, tp_split))
        return {name: tensors[name] for name in tensors}
    except MMError as exc:
        raise ConfigError(f"--load {path}: not a readable MindSpeed-MM OpenSoraPlan checkpoint: {exc}") from None
