"""``mm infer``: an mp4 with the requested frames from an mm checkpoint, a diffusers directory or the CLI."""

from __future__ import annotations

import av
import pytest
from wan_testing import QUIET, SMALL_CLIPS, wan_config

from mm_core.cli import main
from mm_core.errors import CheckpointError, ConfigError
from mm_core.runtime import create_runtime
from mm_models_video.wan2_1.infer import generate

FAST = ["inference.steps=2", "inference.num_frames=5", "inference.height=32", "inference.width=48"]


def _frames(path) -> tuple[int, int, int]:
    with av.open(str(path)) as container:
        frames = [frame for frame in container.decode(video=0)]
    return len(frames), frames[0].height, frames[0].width


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A 2-step tiny training run's checkpoint."""
    from mm_core.testing import run_training

    out = tmp_path_factory.mktemp("run")
    overrides = [*SMALL_CLIPS, *QUIET, "training.device=cpu", "training.train_iters=2", "training.save_interval=2",
                 "training.micro_batch_size=2", "training.global_batch_size=2"]
    return run_training(["wan2_1"], out, overrides).checkpoint


def _generate(tmp_path, *overrides: str) -> str:
    config = wan_config("training.device=cpu", *FAST, f"inference.output={tmp_path / 'out.mp4'}", *overrides,
                        task="infer")
    return generate(config, create_runtime(config))


def test_infer_from_mm_checkpoint(checkpoint, tmp_path) -> None:
    message = _generate(tmp_path, f"inference.checkpoint={checkpoint}")
    assert str(checkpoint) in message
    assert _frames(tmp_path / "out.mp4") == (5, 32, 48)


def test_infer_from_run_dir_and_diffusers_dir(checkpoint, tiny_model, tmp_path) -> None:
    _generate(tmp_path, f"inference.checkpoint={checkpoint.parent.parent}")
    assert _frames(tmp_path / "out.mp4")[0] == 5
    tiny_model.save_pretrained(tmp_path / "wan")
    assert "wan" in _generate(tmp_path, f"inference.checkpoint={tmp_path / 'wan'}", "inference.guidance_scale=1.0")


def test_mm_infer_cli(checkpoint, tmp_path, capsys) -> None:
    out = tmp_path / "cli.mp4"
    code = main([
        "infer", "--plugin", "wan2_1", "--checkpoint", str(checkpoint), "--prompt", "a red circle moving left",
        "--num-frames", "9", "--height", "32", "--width", "32", "--steps", "2", "--guidance-scale", "3",
        "--seed", "1", "--output", str(out), "training.device=cpu",
    ])
    assert code == 0, capsys.readouterr().err
    assert _frames(out) == (9, 32, 32)
    assert f"wrote {out}" in capsys.readouterr().out


def test_infer_rejects_bad_shapes_and_paths(tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"inference: num_frames 8 must be 4k\+1"):
        _generate(tmp_path, "inference.num_frames=8")
    with pytest.raises(ConfigError, match="inference: width 40 must be a multiple of 16"):
        _generate(tmp_path, "inference.width=40")
    with pytest.raises(CheckpointError, match="does not exist"):
        _generate(tmp_path, f"inference.checkpoint={tmp_path / 'nowhere'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="neither an mm checkpoint"):
        _generate(tmp_path, f"inference.checkpoint={tmp_path / 'empty'}")
