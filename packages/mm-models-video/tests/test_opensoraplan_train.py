"""opensoraplan1_3 through mm's loop and CLI: the embedded tiny T2V and I2V train, save, and ``mm infer`` an mp4."""

from __future__ import annotations

import av
import numpy as np
import pytest
import torch
from opensoraplan_testing import QUIET, osp_config

from mm_convert.cli import run as convert
from mm_convert.dcp_io import read_dcp
from mm_core.cli import main
from mm_core.errors import ConfigError
from mm_core.runtime import create_runtime
from mm_core.testing import run_training
from mm_models_video.opensoraplan1_3.infer import generate
from mm_models_video.opensoraplan1_3.transformer import OpenSoraT2V

SHORT = [*QUIET, "training.device=cpu", "training.micro_batch_size=2", "training.global_batch_size=2",
         "training.train_iters=2", "training.save_interval=2", "training.lr_warmup_iters=0"]


def _frames(path) -> tuple[int, int, int]:
    with av.open(str(path)) as container:
        frames = list(container.decode(video=0))
    return len(frames), frames[0].height, frames[0].width


@pytest.mark.parametrize("task", ["t2v", "i2v"])
def test_tiny_run_saves_a_checkpoint_that_mm_infer_turns_into_an_mp4(tmp_path, capsys, task) -> None:
    result = run_training(["opensoraplan1_3"], tmp_path / "run", [*SHORT, f"model.task={task}"])
    assert all(np.isfinite(list(result.losses.values())))
    printed = capsys.readouterr().out
    assert f"mm infer --plugin opensoraplan1_3 --checkpoint {result.checkpoint} --prompt" in printed
    output = tmp_path / "sample.mp4"
    args = ["infer", "--plugin", "opensoraplan1_3", "--checkpoint", str(result.checkpoint), "--prompt", "a red circle",
            "--steps", "2", "--output", str(output), "training.device=cpu"]
    if task == "i2v":
        from PIL import Image

        for name in ("first", "last"):
            Image.fromarray(np.full((40, 40, 3), 200, dtype=np.uint8)).save(tmp_path / f"{name}.png")
        args += ["--image", f"{tmp_path / 'first.png'},{tmp_path / 'last.png'}"]  # a transition
    assert main(args) == 0
    assert _frames(output) == (9, 64, 64)
    if task == "t2v":
        _check_export(result.checkpoint, tmp_path / "export")
    else:
        _check_prompt_files(result.checkpoint, tmp_path)


def _check_prompt_files(checkpoint, tmp_path) -> None:
    """The seeds' cond_prompt.txt / cond_pix_path.txt: a video per line, the outputs numbered."""
    (tmp_path / "prompts.txt").write_text("a red circle\n\na blue square\n")
    first, last = tmp_path / "first.png", tmp_path / "last.png"
    (tmp_path / "images.txt").write_text(f"{first}\n{first},{last}\n")
    args = ["infer", "--plugin", "opensoraplan1_3", "--checkpoint", str(checkpoint), "--prompt",
            str(tmp_path / "prompts.txt"), "--conditional-pixel-values-path", str(tmp_path / "images.txt"),
            "--steps", "1", "--output", str(tmp_path / "many.mp4"), "training.device=cpu"]
    assert main(args) == 0
    assert [_frames(tmp_path / f"many_{i}.mp4") for i in (0, 1)] == [(9, 64, 64)] * 2


def _check_export(checkpoint, target) -> None:
    """``mm-convert OpenSoraPlanConverter export`` writes the trained transformer in the release's layout."""
    convert(["OpenSoraPlanConverter", "export", "--cfg.source_path", str(checkpoint), "--cfg.target_path", str(target)])
    exported = OpenSoraT2V.from_pretrained(target)
    trained = read_dcp(checkpoint, "model.predictor.")
    for name in ("transformer_blocks.3.attn1.to_q.weight", "proj_out.bias"):
        torch.testing.assert_close(exported.state_dict()[name], trained[name], rtol=0, atol=0)


def test_i2v_needs_an_image(tmp_path) -> None:
    config = osp_config("model.task=i2v", "training.device=cpu", "inference.steps=1", task="infer")
    with pytest.raises(ConfigError, match="inference.image is needed for model.task i2v"):
        generate(config, create_runtime(config))
    config = osp_config("model.task=i2v", "training.device=cpu", "inference.image=a.png,b.png,c.png", task="infer")
    with pytest.raises(ConfigError, match="one image .* or two"):
        generate(config, create_runtime(config))
    missing = osp_config("model.task=i2v", "training.device=cpu", f"inference.image={tmp_path / 'no.png'}",
                         task="infer")
    with pytest.raises(ConfigError, match="no.png does not exist"):
        generate(missing, create_runtime(missing))


def test_embedded_default_loss_goes_down(tmp_path) -> None:
    """``mm run --plugin opensoraplan1_3`` as it is: 60 steps of the tiny T2V on generated clips."""
    result = run_training(["opensoraplan1_3"], tmp_path / "run", [*QUIET, "training.device=cpu"])
    losses = torch.tensor([result.losses[s] for s in sorted(result.losses)])
    assert len(losses) == 60 and losses[-15:].mean() < losses[:15].mean()
    assert result.checkpoint is not None
