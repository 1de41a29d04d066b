"""A MindSpeed-MM Qwen2.5-VL checkpoint (``release/`` or ``iter_*/`` with ``mp_rank_*``, or an FSDP2 (DCP) one) as a
folder mm loads.

``--load`` in a MindSpeed-MM launch script names such a checkpoint; mm trains transformers' Qwen2.5-VL, so the
checkpoint is converted once (its TP ranks merged, its pipeline stages joined, its names mapped back; fused or in
the enable_canonical_hf_struct layout) into a Hugging Face folder in the data cache, keyed by the checkpoint's
files, and loaded from there.
"""

from __future__ import annotations

from pathlib import Path

from mm_convert import read_megatron
from mm_convert.dcp_layout import find_dcp, read_mindspeed_dcp
from mm_convert.load_cache import converted_once
from mm_convert.tp_split import merge_tp
from mm_core.errors import ConfigError, MMError


def as_hf_folder(checkpoint: Path, hf_dir: Path, cache: Path) -> Path:
    """``checkpoint`` converted to a Hugging Face folder under ``cache`` (config and processor from ``hf_dir``)."""
    if not (hf_dir / "config.json").is_file():
        raise ConfigError(f"--load {checkpoint} is a MindSpeed-MM checkpoint: mm needs the Hugging Face folder it "
                          "was converted from for its config and processor; set data preprocess_parameters."
                          "model_name_or_path to it")
    return converted_once(checkpoint, cache, "from-mindspeed", lambda target: _convert(checkpoint, hf_dir, target))


def _convert(checkpoint: Path, hf_dir: Path, target: Path) -> None:
    # convert.py reaches this module through export.py and data.py: imported here, not at the top
    from mm_models_vlm.qwen2_5_vl.convert import Qwen2_5_VLConverter, is_canonical
    from mm_models_vlm.qwen2_5_vl.convert_options import CommonModelConfig, DcpToHfOptions
    from mm_models_vlm.qwen2_5_vl.qwen_layout import QwenLayout, tp_split

    try:
        pipeline = QwenLayout(hf_dir).pipeline
        if find_dcp(checkpoint) is not None:
            common = CommonModelConfig(enable_canonical_hf_struct=is_canonical(read_mindspeed_dcp(checkpoint,
                                                                                                 pipeline.stacks)))
            Qwen2_5_VLConverter().dcp_to_hf(DcpToHfOptions(load_dir=checkpoint, save_dir=target,
                                                           model_assets_dir=hf_dir, common_model_config=common))
            return
        whole = merge_tp(read_megatron(checkpoint, pipeline).sources, tp_split)
        qwen = QwenLayout(hf_dir, canonical=is_canonical(whole))
        qwen.write_hf(qwen.rules.to_hf(whole), hf_dir, target, "5GB")
    except MMError as exc:
        raise ConfigError(f"--load {checkpoint}: not a readable MindSpeed-MM Qwen2.5-VL checkpoint: {exc}") from None
