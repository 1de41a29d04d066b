"""Export an mm training checkpoint of qwen2_5_vl to a Hugging Face directory (save_pretrained)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from transformers import Qwen2_5_VLForConditionalGeneration

from mm_core.checkpoint import CONFIG_FILE, load_model_state
from mm_core.config import load_file, wrap
from mm_core.errors import CheckpointError, MMError
from mm_models_vlm.qwen2_5_vl.cache import load_processor
from mm_models_vlm.qwen2_5_vl.data import model_config, processor_dir


def export_hf(checkpoint_dir: str | Path, out_dir: str | Path) -> Path:
    """Write the checkpoint's weights, model config and processor to ``out_dir`` as ``from_pretrained`` reads them."""
    checkpoint_dir, out_dir = Path(checkpoint_dir), Path(out_dir)
    if not (checkpoint_dir / CONFIG_FILE).is_file():
        raise CheckpointError(f"{checkpoint_dir} is not an mm checkpoint (no {CONFIG_FILE})")
    config = wrap(load_file(checkpoint_dir / CONFIG_FILE))
    model = Qwen2_5_VLForConditionalGeneration._from_config(model_config(config))
    load_model_state(checkpoint_dir, model)
    model.save_pretrained(out_dir)
    load_processor(processor_dir(config)).save_pretrained(out_dir)
    return out_dir


def main(argv: list[str] | None = None) -> int:
    """``python -m mm_models_vlm.qwen2_5_vl.export CHECKPOINT OUT_DIR``."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("checkpoint", help="a checkpoints/step_XXXXXXXX directory of an mm run")
    parser.add_argument("out_dir", help="where to write the Hugging Face directory")
    args = parser.parse_args(argv)
    try:
        print(f"exported to {export_hf(args.checkpoint, args.out_dir)}")
    except MMError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
