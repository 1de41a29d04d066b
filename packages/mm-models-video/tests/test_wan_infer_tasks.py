"""wan2_1's ``mm infer`` beyond T2V and I2V, from MindSpeed-MM's own inference files made tiny: v2v (a source clip
noised to ``strength``), FLF2V (first and last frames) and ``ae.i2v_processor.i2v_vae_encode_tiling``."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from mm_core.cli import main as mm
from mm_core.errors import ConfigError, DataError
from mm_core.plugins import load_plugins, make_config
from mm_core.runtime import create_runtime
from mm_core.testing import launch_script_flags
from mm_data.synthetic import write_video
from mm_models_video.wan2_1 import infer
from mm_models_video.wan2_1.build import build_model
from mm_models_video.wan2_1.flavors import get_flavor
from mm_models_video.wan2_1.plugin import inference, settle
from mm_models_video.wan2_1.v2v import noised_latents, source_clip, video_pipeline

MINDSPEED = Path(__file__).resolve().parents[3] / "examples" / "wan2_1" / "mindspeed-mm"
# The tiny flavor's transformer in MindSpeed-MM's predictor keys (I2V: 2 × 4 latent + 4 mask channels in).
TINY = {"patch_size": [1, 2, 2], "text_len": 64, "in_dim": 4, "hidden_size": 128, "ffn_dim": 256, "freq_dim": 64,
        "text_dim": 64, "img_dim": 32, "out_dim": 4, "num_heads": 4, "num_layers": 2, "max_seq_len": 256}
CPU = ["training.device=cpu"]


def _tiny(real: str, tmp_path: Path, predictor: dict | None = None, name: str = "model.json", **keys) -> Path:
    """MindSpeed-MM's inference model.json ``real`` with the tiny architecture, no weights, 2 steps without
    guidance and ``keys``, written to ``tmp_path / name``."""
    model = json.loads((MINDSPEED / real).read_text())
    model["predictor"].update(TINY, **(predictor or {}))
    for part in ("ae", "tokenizer", "text_encoder", "image_encoder"):
        model.get(part, {}).pop("from_pretrained", None)
    model["diffusion"].update(num_inference_steps=2, guidance_scale=1.0)
    model.update(prompt="a red circle", save_path=str(tmp_path / "samples"), **keys)
    path = tmp_path / name
    path.write_text(json.dumps(model))
    return path


def _config(path: Path, *overrides: str):
    return make_config(load_plugins(["wan2_1"]), "infer", [], {"model": path}, [*CPU, *overrides])


def _infer(path: Path, *overrides: str) -> str:
    config = _config(path, *overrides)
    return inference(config, create_runtime(config))


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """A 12-frame 48 × 32 (h × w) clip: a gradient that moves down a step each frame."""
    t, y, x = np.meshgrid(np.arange(12), np.arange(48), np.arange(32), indexing="ij")
    frames = np.stack([(y * 5 + t * 3) % 256, x * 7, np.full_like(x, 128)], axis=-1).astype(np.uint8)
    return write_video(tmp_path_factory.mktemp("v2v") / "source.mp4", frames, 8)


def test_v2v_reads_num_frames_from_start_frame_at_the_output_area_and_the_sources_aspect(source, tmp_path):
    path = _tiny("1.3b/v2v/inference_model.json", tmp_path, video=str(source), start_frame=2, num_frames=9,
                 pipeline_config={"input_size": [81, 32, 32]})
    message = _infer(path)
    # MindSpeed-MM's sizing: 32 × 32's area at 48:32, each side down to a multiple of 16 -> 32 high, 16 wide
    assert message.startswith(f"wrote {tmp_path / 'samples' / 'wan2_1.mp4'}: 9 frames of 16x32 from untrained tiny")
    with av.open(str(tmp_path / "samples" / "wan2_1.mp4")) as container:
        assert container.streams.video[0].average_rate == 16  # the file's fps // frame_interval
    too_late = _tiny("1.3b/v2v/inference_model.json", tmp_path, name="late.json", video=str(source), start_frame=4,
                     num_frames=9)
    with pytest.raises(DataError, match=r"source.mp4 has 12 frames but 13 are needed for 9 frames from frame 4"):
        _infer(too_late)
    with pytest.raises(ConfigError, match=r"inference.video .*nope.mp4 does not exist"):
        _infer(path, f"inference.video={tmp_path / 'nope.mp4'}")
    with pytest.raises(ConfigError, match=r"inference.strength must be in \(0, 1\] and leave at least one of the 2"):
        _infer(path, "inference.strength=0.4")


def test_v2v_starts_strength_x_steps_from_the_end_on_the_noised_source_and_is_t2v_at_strength_1(source, tmp_path):
    config = _config(_tiny("1.3b/v2v/inference_model.json", tmp_path))
    settle(config)
    model = infer.load_model(config.model, None)
    model.do_sample = False  # the source's latents: the posterior's mode
    scheduler = infer.sampling_scheduler(model, get_flavor(config.model.flavor), config.model, None)
    pipe = video_pipeline(model, scheduler)
    pixels = source_clip(source, 2, 9, (32, 32), 16)
    assert pixels.shape == (1, 3, 9, 32, 16)
    sample = {"prompt_embeds": model.encode_text(["a red circle"]), "guidance_scale": 1.0, "height": 32,
              "width": 16, "output_type": "latent"}
    calls = []
    model.predictor.register_forward_pre_hook(lambda *_: calls.append(1))

    def v2v(strength: float, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
        generator = torch.Generator().manual_seed(0)
        start = noised_latents(pipe, model, pixels, steps, strength, generator)
        calls.clear()
        return start, pipe(latents=start, strength=strength, num_inference_steps=steps, generator=generator,
                           **sample).frames

    start, _ = v2v(0.5, 4)
    assert len(calls) == 2  # the last strength × steps of the 4 steps
    sigma = scheduler.sigmas[2]  # where they start
    noise = torch.randn(start.shape, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(start, (1 - sigma) * model.encode_video(pixels) + sigma * noise)
    _, full = v2v(1.0, 2)
    t2v = infer.sampling_pipeline(model, scheduler, video=False)(
        num_frames=9, num_inference_steps=2, generator=torch.Generator().manual_seed(0), **sample).frames
    # strength 1 starts at the schedule's first sigma, just under 1: t2v's start but for a trace of the source
    torch.testing.assert_close(full, t2v, rtol=0, atol=1e-4)


def _images(tmp_path: Path) -> tuple[Path, Path]:
    first, last = tmp_path / "first.png", tmp_path / "last.png"
    Image.new("RGB", (40, 32), (200, 30, 30)).save(first)
    Image.new("RGB", (40, 32), (30, 30, 200)).save(last)
    return first, last


def test_flf2v_conditions_on_the_first_and_last_frames(tmp_path, monkeypatch, capsys, restored_logging):
    first, last = _images(tmp_path)
    (tmp_path / "images.txt").write_text(f"{first}, {last}\n")
    path = _tiny("14b/flf2v/inference_model.json", tmp_path, {"in_dim": 12}, image=str(tmp_path / "images.txt"),
                 pipeline_config={"input_size": [9, 32, 32]})
    seen = {}
    load = infer.load_model

    def keep(_module, _args, kwargs) -> None:
        seen.setdefault("in", kwargs)

    def hooked(*args):
        model = load(*args)
        model.predictor.register_forward_pre_hook(keep, with_kwargs=True)
        return model

    monkeypatch.setattr(infer, "load_model", hooked)
    assert "9 frames of 32x32" in _infer(path)
    # both images' 17 CLIP tokens; the mask (channels 4-7) marks the first latent frame and the clip's last frame
    assert seen["in"]["encoder_hidden_states_image"].shape == (2, 17, 32)
    mask = seen["in"]["hidden_states"][0, 4:8]
    assert (mask[:, 0] == 1).all() and (mask[:, 1:-1] == 0).all()
    assert (mask[3, -1] == 1).all() and (mask[:3, -1] == 0).all()
    with pytest.raises(ConfigError, match="an FLF2V model needs the first and last frames: inference.last_image"):
        _infer(path, f"inference.image={first}")
    assert mm(["run", "--plugin", "wan2_1", "--model", str(path), *CPU]) != 0
    assert "an FLF2V model (model.predictor.model_type flf2v, pos_embed_seq_len 34) runs in mm infer only" in \
        capsys.readouterr().err
    i2v = _tiny("14b/flf2v/inference_model.json", tmp_path, {"in_dim": 12, "model_type": "i2v"}, name="i2v.json")
    with pytest.raises(ConfigError, match="inference.last_image needs an FLF2V model"):
        _infer(i2v, f"inference.image={first}", f"inference.last_image={last}")


def test_i2v_vae_encode_tiling_tiles_the_first_frame_encode_only(tmp_path):
    tiles = ["model.ae.tiling_param.tile_sample_min_height=24", "model.ae.tiling_param.tile_sample_min_width=24",
             "model.ae.tiling_param.tile_sample_stride_height=16", "model.ae.tiling_param.tile_sample_stride_width=16"]

    def model(*overrides: str):
        config = make_config(load_plugins(["wan2_1"]), "run", [], {}, ["model.task=i2v", *tiles, *overrides])
        return build_model(config.model)

    frame = torch.rand(1, 3, 32, 32) * 2 - 1
    untiled, tiled = model(), model("model.ae.enable_tiling=true")
    forced = model("model.ae.i2v_processor.i2v_vae_encode_tiling=true")  # with enable_tiling false
    condition = forced.condition_latents(frame, 1)
    assert not torch.equal(condition, untiled.condition_latents(frame, 1))
    torch.testing.assert_close(condition, tiled.condition_latents(frame, 1), rtol=0, atol=0)
    clip = frame.unsqueeze(2)
    torch.testing.assert_close(forced.encode_video(clip), untiled.encode_video(clip), rtol=0, atol=0)
    with pytest.raises(ConfigError, match="i2v_vae_encode_tiling must be true, false or 'auto', got 'often'"):
        model("model.ae.i2v_processor.i2v_vae_encode_tiling=often")


@pytest.mark.parametrize("folder", ["1.3b/v2v", "14b/v2v", "14b/flf2v"])
def test_the_v2v_and_flf2v_scripts_flags_are_a_valid_infer(folder, capsys, restored_logging):
    model = MINDSPEED / folder / "inference_model.json"
    flags = launch_script_flags(MINDSPEED / folder / "inference.sh", MM_MODEL=str(model), GBS="1")
    assert mm(["config", "--plugin", "wan2_1", *flags]) == 0
    out, err = capsys.readouterr()
    assert "Traceback" not in err and "error" not in err and "model.pipeline_class" in err
    assert "from_pretrained: ./weights/Wan-AI/Wan2.1-" in out
    assert ("video: examples/wan2.1/samples_v2v_videos.txt" in out) == ("v2v" in folder)
    assert ("model_type: flf2v" in out) == ("flf2v" in folder)
