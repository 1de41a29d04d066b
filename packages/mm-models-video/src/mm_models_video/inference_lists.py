"""The prompt and image lists of ``mm infer`` (MindSpeed-MM's .txt files, one entry a line) and the video paths
they are written to."""

from __future__ import annotations

from pathlib import Path

from mm_core.errors import ConfigError


def lines_of(value: str, key: str) -> list[str]:
    """``value`` itself, or the non-empty lines of the .txt file it names (MindSpeed-MM's prompt and image lists)."""
    if not value.endswith(".txt"):
        return [value]
    path = Path(value).expanduser()
    if not path.is_file():
        raise ConfigError(f"inference.{key} {value} does not exist")
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def output_paths(output: str, prompts: int, per_prompt: int = 1) -> list[str]:
    """``output`` for one video, else ``<stem>_<k><suffix>`` with k = prompt × per_prompt + video (the numbering
    MindSpeed-MM's histogram_generator reads back for DPO data)."""
    if prompts * per_prompt == 1:
        return [output]
    path = Path(output)
    return [str(path.with_name(f"{path.stem}_{k}{path.suffix}")) for k in range(prompts * per_prompt)]
