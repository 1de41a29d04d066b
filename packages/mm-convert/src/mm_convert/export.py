"""mm training checkpoints (DCP under ``<output_dir>/checkpoints/step_XXXXXXXX``), their run config, LoRA runs.

A LoRA run's checkpoint holds adapters only. Every family's ``export`` reads it through
:func:`find_training_checkpoint`, which hands it the run merged (base weights + adapters, as a full checkpoint), so
the export writes the family's diffusers / transformers layout; ``--cfg.lora adapter`` writes peft's adapter folder.
"""

from __future__ import annotations

import atexit
import json
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch.distributed.checkpoint as dcp
from safetensors.torch import save_file
from torch.distributed.checkpoint.state_dict import get_model_state_dict

from mm_convert.errors import ConvertError
from mm_convert.options import option
from mm_core import lora
from mm_core.checkpoint import CONFIG_FILE, latest_checkpoint
from mm_core.config import Config, dump, load_file, wrap

LORA_MODES = ("merged", "adapter")


@dataclass
class ExportOptions:
    """Options of ``export``."""

    source_path: Path = option(help="training checkpoint: a step_XXXXXXXX/ folder, or a run's output_dir (latest)")
    target_path: Path = option(help="folder to write for from_pretrained")
    lora: str = option("merged", help="a LoRA run: merged (base + adapters, the family's layout) or adapter "
                                      "(peft's adapter folder for PeftModel.from_pretrained)")


def find_training_checkpoint(path: str | Path) -> Path:
    """``path`` itself when it is a DCP checkpoint, else the latest ``checkpoints/step_*`` under it.

    A LoRA run's checkpoint comes back merged into its base model, as a full checkpoint in a temporary folder.
    """
    found = _training_checkpoint(Path(path))
    return merged_checkpoint(found) if lora.checkpoint_settings(found) is not None else found


def _training_checkpoint(path: Path) -> Path:
    if (path / ".metadata").is_file():
        return path
    for root in (path / "checkpoints", path):
        found = latest_checkpoint(root)
        if found is not None:
            return found
    raise ConvertError(f"{path} is neither an mm training checkpoint (no .metadata) nor a run with checkpoints/step_*")


def merged_checkpoint(checkpoint: Path) -> Path:
    """A LoRA run's checkpoint as a full mm checkpoint of the merged model (removed when the process ends)."""
    model = lora.merge(lora.rebuild(checkpoint))
    out = Path(tempfile.mkdtemp(prefix=f"mm-lora-merged-{checkpoint.name}-"))
    atexit.register(shutil.rmtree, out, True)
    with warnings.catch_warnings():  # DCP warns that one process saves alone: intended
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.save({"model": get_model_state_dict(model)}, checkpoint_id=str(out), no_dist=True)
    config = run_config(checkpoint)
    config.model.lora["rank"] = 0
    (out / CONFIG_FILE).write_text(dump(config), encoding="utf-8")
    return out


def export_adapter(opts: ExportOptions) -> str:
    """``--cfg.lora adapter``: the LoRA run's adapters as peft's folder (adapter_config.json, safetensors)."""
    checkpoint = _training_checkpoint(Path(opts.source_path))
    settings = lora.checkpoint_settings(checkpoint)
    if settings is None:
        raise ConvertError(f"{checkpoint} is not of a LoRA run (model.lora.rank is 0): it has no adapters to export")
    config, weights, root = lora.peft_adapter(lora.rebuild(checkpoint), settings)
    target = Path(opts.target_path)
    target.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(str(target))
    save_file(weights, str(target / "adapter_model.safetensors"), metadata={"format": "pt"})
    (target / "mm_adapter.json").write_text(json.dumps({"checkpoint": str(checkpoint), "module": root}) + "\n")
    where = f" of its {root}" if root else ""
    return f"exported the adapters{where} of {checkpoint} -> {target} (peft: PeftModel.from_pretrained)"


def export_lora(opts: ExportOptions) -> str | None:
    """What ``export`` does first: ``--cfg.lora adapter`` writes the adapter folder (its message), merged: None."""
    if opts.lora not in LORA_MODES:
        raise ConvertError(f"--cfg.lora must be one of {', '.join(LORA_MODES)}, got {opts.lora!r}")
    return export_adapter(opts) if opts.lora == "adapter" else None


def run_config(checkpoint: Path) -> Config:
    """The run config saved with ``checkpoint``: it says which model the weights belong to."""
    config_file = checkpoint / CONFIG_FILE
    if not config_file.is_file():
        raise ConvertError(f"{checkpoint} has no {CONFIG_FILE}: cannot tell which model it holds")
    return wrap(load_file(config_file))
