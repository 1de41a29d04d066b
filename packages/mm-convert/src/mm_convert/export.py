"""mm training checkpoints (DCP under ``<output_dir>/checkpoints/step_XXXXXXXX``) and their run config."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mm_convert.errors import ConvertError
from mm_convert.options import option
from mm_core.checkpoint import CONFIG_FILE, latest_checkpoint
from mm_core.config import Config, load_file, wrap


@dataclass
class ExportOptions:
    """Options of ``export``."""

    source_path: Path = option(help="training checkpoint: a step_XXXXXXXX/ folder, or a run's output_dir (latest)")
    target_path: Path = option(help="folder to write for from_pretrained")


def find_training_checkpoint(path: str | Path) -> Path:
    """``path`` itself when it is a DCP checkpoint, else the latest ``checkpoints/step_*`` under it."""
    path = Path(path)
    if (path / ".metadata").is_file():
        return path
    for root in (path / "checkpoints", path):
        found = latest_checkpoint(root)
        if found is not None:
            return found
    raise ConvertError(f"{path} is neither an mm training checkpoint (no .metadata) nor a run with checkpoints/step_*")


def run_config(checkpoint: Path) -> Config:
    """The run config saved with ``checkpoint``: it says which model the weights belong to."""
    config_file = checkpoint / CONFIG_FILE
    if not config_file.is_file():
        raise ConvertError(f"{checkpoint} has no {CONFIG_FILE}: cannot tell which model it holds")
    return wrap(load_file(config_file))
