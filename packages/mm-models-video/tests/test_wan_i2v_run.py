"""wan2_1 I2V end to end: training through mm-core's loop, the `mm infer --image` hint, inference (N videos per
prompt, prompt and image files), export."""

from __future__ import annotations

import av
import pytest
import torch
from diffusers import WanTransformer3DModel
from wan_testing import QUIET, SMALL_CLIPS, wan_config

from mm_convert.cli import main as convert
from mm_core.checkpoint import load_model_state
from mm_core.cli import main
from mm_core.config import load_file, wrap
from mm_core.errors import ConfigError
from mm_core.runtime import create_runtime
from mm_models_video.wan2_1.build import build_model
from mm_models_video.wan2_1.infer import generate

I2V = ["model.task=i2v"]
RUN = [*I2V, *SMALL_CLIPS, *QUIET, "training.micro_batch_size=2", "training.global_batch_size=2",
       "training.lr_warmup_iters=0"]
FAST = ["inference.steps=2", "inference.num_frames=5", "inference.height=32", "inference.width=32"]


def _frames(path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 2-step tiny I2V run: its result and what it printed."""
    import contextlib
    import io

    from mm_core.testing import run_training

    out = tmp_path_factory.mktemp("i2v")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        result = run_training(["wan2_1"], out, [*RUN, "training.device=cpu", "training.train_iters=2",
                                                "training.save_interval=2"])
    return result, printed.getvalue()


def test_training_prints_the_infer_command_with_a_first_frame_it_wrote(trained, tmp_path) -> None:
    result, printed = trained
    image = result.output_dir / "first_frame.png"
    assert f"--checkpoint {result.checkpoint} --prompt" in printed and f"--image {image}" in printed
    out = tmp_path / "video.mp4"
    code = main(["infer", "--plugin", "wan2_1", "--checkpoint", str(result.checkpoint), "--image", str(image),
                 "--prompt", "a red circle", "--num-frames", "5", "--height", "32", "--width", "32", "--steps", "2",
                 "--num-inference-videos-per-sample", "2", "--output", str(out), "training.device=cpu"])
    assert code == 0
    assert [_frames(tmp_path / f"video_{k}.mp4") for k in range(2)] == [5, 5]
    assert not out.exists()


@pytest.mark.slow
def test_prompt_and_image_files_number_the_videos_prompt_by_prompt(trained, tmp_path) -> None:
    result, _ = trained
    image = result.output_dir / "first_frame.png"
    (tmp_path / "prompts.txt").write_text("a red circle\n\na blue square\n")
    (tmp_path / "images.txt").write_text(f"{image}\n{image}\n")
    config = wan_config("training.device=cpu", *FAST, f"inference.checkpoint={result.checkpoint}",
                        f"inference.prompt={tmp_path / 'prompts.txt'}", f"inference.image={tmp_path / 'images.txt'}",
                        "inference.num_inference_videos_per_sample=2", f"inference.output={tmp_path / 'v.mp4'}",
                        task="infer")
    message = generate(config, create_runtime(config))
    assert message.startswith(f"wrote {tmp_path / 'v_0.mp4'}, {tmp_path / 'v_1.mp4'}, {tmp_path / 'v_2.mp4'}, "
                              f"{tmp_path / 'v_3.mp4'}: 5 frames of 32x32")
    first, second = (av.open(str(tmp_path / f"v_{k}.mp4")) for k in (0, 1))
    with first, second:
        a, b = (next(c.decode(video=0)).to_ndarray() for c in (first, second))
    assert (a != b).any()  # two samples of one prompt draw different noise


def test_i2v_inference_needs_its_image(tmp_path) -> None:
    overrides = ["training.device=cpu", *I2V, *FAST]
    with pytest.raises(ConfigError, match="inference.image is not set: Wan2.1 I2V"):
        generate(wan_config(*overrides, task="infer"), create_runtime(wan_config(task="infer")))
    with pytest.raises(ConfigError, match="inference.image .*nope.png does not exist"):
        generate(wan_config(*overrides, f"inference.image={tmp_path / 'nope.png'}", task="infer"),
                 create_runtime(wan_config(task="infer")))


@pytest.mark.slow
def test_export_of_an_i2v_run_loads_with_from_pretrained(trained, tmp_path) -> None:
    result, _ = trained
    assert convert(["Wan21Converter", "export", "--cfg.source_path", str(result.output_dir), "--cfg.target_path",
                    str(tmp_path / "exported")]) == 0
    exported = WanTransformer3DModel.from_pretrained(tmp_path / "exported", subfolder="transformer")
    model = build_model(wrap(load_file(result.checkpoint / "config.yaml")).model)
    load_model_state(result.checkpoint, model)
    assert exported.config.image_dim == 32 and exported.config.in_channels == 12
    trained_state = model.predictor.state_dict()
    assert all(torch.equal(t, trained_state[k]) for k, t in exported.state_dict().items())


@pytest.mark.slow
def test_short_i2v_run_loss_decreases(mm_train) -> None:
    result = mm_train(["wan2_1"], *RUN, "training.train_iters=12", "training.save_interval=0")
    losses = [result.losses[s] for s in sorted(result.losses)]
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4
