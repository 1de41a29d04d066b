"""The closing lines of a video family's training run: where the checkpoint is and the ``mm infer`` command for it."""

from __future__ import annotations

from pathlib import Path

from mm_core.runtime import Runtime


def print_infer_hint(plugin: str, runtime: Runtime, checkpoint: Path, prompt: str, flags: str = "") -> None:
    """Print the checkpoint and the ``mm infer --plugin plugin`` command (``flags`` added) that samples it."""
    prompt = prompt.replace('"', '\\"')
    print(f"{plugin} checkpoint: {checkpoint}")
    print("make a video with:")
    print(f'  mm infer --plugin {plugin} --checkpoint {checkpoint} --prompt "{prompt}"{flags} '
          f"--output {runtime.output_dir / 'sample.mp4'}")
