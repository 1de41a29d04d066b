"""The embedded stepvideo run trains the tiny T2V / TI2V on generated clips (loss down, checkpoint, the mm infer
command), the composite runs the release's transformer forward, and mm infer writes the videos."""

from __future__ import annotations

import pytest
import torch
from stepvideo_testing import QUIET, stepvideo_config

from mm_core.errors import ConfigError
from mm_core.plugins import load_plugins
from mm_core.runtime import create_runtime
from mm_models_video.stepvideo.build import build_model

SHORT = [*QUIET, "training.train_iters=8", "training.save_interval=8", "training.lr_warmup_iters=2",
         "training.micro_batch_size=2", "training.global_batch_size=2"]


def test_the_composite_runs_the_release_forward() -> None:
    model = build_model(stepvideo_config().model)
    torch.manual_seed(0)
    latents = torch.randn(2, 3, 4, 2, 2)
    text = model.encode_text(["a red circle", "a blue square moving left"])
    noise, indices = torch.randn_like(latents), torch.tensor([10, 900])
    out = model(latents=latents, **text, noise=noise, timestep_indices=indices)
    noised, times = model.diffusion.add_noise(latents, noise, indices)
    clip_len = text["clip_embeds"].shape[1]
    mask = torch.cat([torch.ones(2, clip_len, dtype=torch.long), text["prompt_mask"]], 1)
    expected = model.predictor(noised, text["prompt_embeds"], text["clip_embeds"], times, mask, return_dict=False)
    torch.testing.assert_close(out["pred"], expected, rtol=0, atol=0)
    torch.testing.assert_close(out["target"], latents - noise)
    assert out["tokens"] == 2 * 3 * 2 * 2


def test_embedded_t2v_run_trains_saves_and_prints_the_infer_command(mm_train, tmp_path, capsys) -> None:
    result = mm_train(["stepvideo"], *SHORT, output_dir=tmp_path / "run")
    losses = list(result.losses.values())
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3
    assert result.checkpoint is not None and result.checkpoint.name == "step_00000008"
    printed = capsys.readouterr().out
    assert f"mm infer --plugin stepvideo --checkpoint {result.checkpoint} --prompt" in printed


@pytest.mark.slow
def test_embedded_ti2v_run_trains(mm_train, tmp_path) -> None:
    result = mm_train(["stepvideo"], *SHORT, "model.task=i2v", "training.train_iters=12", output_dir=tmp_path)
    losses = list(result.losses.values())
    assert len(losses) == 12 and sum(losses[-3:]) < sum(losses[:3])


def _infer(checkpoint, output, *overrides: str) -> str:
    source = [f"inference.checkpoint={checkpoint}"] if checkpoint else []
    config = stepvideo_config(*source, f"inference.output={output}", "inference.steps=4", *overrides, task="infer")
    pm = load_plugins(["stepvideo"])
    runtime = create_runtime(config)
    try:
        return pm.hook.inference(config=config, runtime=runtime)
    finally:
        runtime.close()


def test_infer_writes_several_videos_per_prompt(mm_train, tmp_path) -> None:
    from mm_data.video import read_video

    run = mm_train(["stepvideo"], *QUIET, "training.train_iters=1", "training.save_interval=1", output_dir=tmp_path)
    message = _infer(run.checkpoint, tmp_path / "out.mp4", "inference.num_inference_videos_per_sample=2")
    assert message.startswith(f"wrote {tmp_path / 'out_0.mp4'}, {tmp_path / 'out_1.mp4'}: 17 frames of 32x32")
    first, second = (read_video(tmp_path / f"out_{i}.mp4", 17, None) for i in (0, 1))
    assert first.shape == (17, 32, 32, 3) and not torch.equal(first, second)


def test_ti2v_infer_needs_the_image(tmp_path) -> None:
    with pytest.raises(ConfigError, match="needs the first frame, --image FILE"):
        _infer(None, tmp_path / "out.mp4", "model.task=i2v")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.dataset_param.num_frames=16", "num_frames 16 must be a multiple of 17"),
        ("data.dataset_param.max_height=40", "height 40 must be a multiple of 16"),
        ("data.dataset_param.drop_short_ratio=0.5", "drop_short_ratio 0.5 keeps clips shorter than num_frames"),
        ("model.task=t2i", "model.task must be one of t2v, i2v"),
        # Slow: the generated clips are made at the 30b flavor's size before the model is checked.
        pytest.param("model.flavor=30b", "model.ae.from_pretrained .or model.from_pretrained. is needed for flavor "
                     "'30b'", marks=pytest.mark.slow),
        ("model.predictor.channel_split=[16,16,8]", "channel_split .16, 16, 8. must be even widths adding up"),
    ],
)
def test_bad_config_is_one_clear_error(mm_train, tmp_path, override, message) -> None:
    with pytest.raises(ConfigError, match=message):
        mm_train(["stepvideo"], *SHORT, override, output_dir=tmp_path)


@pytest.mark.parametrize("task", ["t2v", "i2v"])
def test_the_example_configs_validate(task) -> None:
    from pathlib import Path

    from mm_core.plugins import make_config

    examples = Path(__file__).parents[3] / "examples" / "stepvideo"
    config = make_config(load_plugins(["stepvideo"]), "run", [str(examples / f"pretrain_{task}.yaml")],
                         {"model": str(examples / f"pretrain_{task}_model.json"),
                          "data": str(examples / f"data_{task}.json")}, [])
    assert config.model.task == task and config.model.flavor == "30b"
