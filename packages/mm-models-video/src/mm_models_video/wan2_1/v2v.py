"""Video to video for wan2_1's ``mm infer``, as MindSpeed-MM's WanPipeline does it: ``num_frames`` frames of the
source clip from ``start_frame``, resized to the output's area at the source's aspect ratio, encoded, noised to the
first of the last ``strength`` × steps timesteps and denoised by diffusers' ``WanVideoToVideoPipeline``."""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import WanVideoToVideoPipeline
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils.torch_utils import randn_tensor

from mm_core.errors import ConfigError
from mm_data.video import FrameSampling, read_video
from mm_models_video.wan2_1.model import WanT2V


def source_path(path: str) -> Path:
    """The source video file ``path`` names (inference.video), or a ConfigError saying it does not exist."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(f"inference.video {path} does not exist")
    return file


def read_source(path: str | Path, start: int, num_frames: int) -> torch.Tensor:
    """``num_frames`` consecutive frames of the video file ``path`` from frame ``start``: uint8 [T, H, W, C]."""
    if not isinstance(start, int) or start < 0:
        raise ConfigError(f"inference.start_frame must be a frame index (0 or more), got {start!r}")
    return read_video(source_path(str(path)), num_frames, start=start, sampling=FrameSampling(num_frames, interval=1))


def output_size(source_hw: tuple[int, int], height: int, width: int, multiple: int) -> tuple[int, int]:
    """The (height, width) of ``height`` × ``width``'s area at the source's aspect ratio, each side rounded down to
    ``multiple`` (VAE stride × patch size), as MindSpeed-MM sizes v2v."""
    aspect = source_hw[0] / source_hw[1]
    area = height * width
    sides = (math.sqrt(area * aspect), math.sqrt(area / aspect))
    out_h, out_w = (int(side // multiple) * multiple for side in sides)
    if min(out_h, out_w) < multiple:
        raise ConfigError(f"inference.video of {source_hw[0]}x{source_hw[1]} (h x w) at the area of {height}x{width} "
                          f"leaves a side under {multiple} pixels; give a larger inference.height / width")
    return out_h, out_w


def source_pixels(frames: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """uint8 frames [T, H, W, C] -> float pixels [1, 3, T, height, width] in [-1, 1] (antialiased bilinear)."""
    pixels = frames.permute(0, 3, 1, 2).float() / 255.0
    if pixels.shape[-2:] != (height, width):
        pixels = F.interpolate(pixels, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
    return (2.0 * pixels - 1.0).clamp(-1.0, 1.0).permute(1, 0, 2, 3).unsqueeze(0)


def source_clip(path: str | Path, start: int, num_frames: int, area: tuple[int, int], multiple: int) -> torch.Tensor:
    """The source's frames as the pipeline takes them: [1, 3, num_frames, h, w] in [-1, 1] at ``area``'s
    (height, width) area and the source's aspect ratio."""
    frames = read_source(path, start, num_frames)
    return source_pixels(frames, *output_size(tuple(frames.shape[1:3]), *area, multiple))


def video_pipeline(model: WanT2V, scheduler: SchedulerMixin) -> WanVideoToVideoPipeline:
    """A diffusers WanVideoToVideoPipeline over the model's very modules and ``scheduler``."""
    return WanVideoToVideoPipeline(tokenizer=model.tokenizer, text_encoder=model.text_encoder,
                                   transformer=model.predictor, vae=model.ae, scheduler=scheduler)


def check_strength(strength: float, steps: int) -> None:
    """A ConfigError unless ``strength`` in (0, 1] leaves at least one of the ``steps`` denoising steps."""
    if not isinstance(strength, (int, float)) or not 0 < strength <= 1 or int(steps * strength) < 1:
        raise ConfigError(f"inference.strength must be in (0, 1] and leave at least one of the {steps} steps "
                          f"(strength × steps ≥ 1), got {strength!r}")


def noised_latents(pipe: WanVideoToVideoPipeline, model: WanT2V, pixels: torch.Tensor, steps: int, strength: float,
                   generator: torch.Generator) -> torch.Tensor:
    """The source's latents (mm's encode: ``ae.do_sample``, ``norm_latents``, tiling) noised to the first timestep
    the pipeline runs at ``strength``, with the noise ``generator`` gives (what WanPipeline draws at strength 1)."""
    latents = model.encode_video(pixels.to(model.ae.device))
    noise = randn_tensor(latents.shape, generator=generator, device=latents.device, dtype=torch.float32)
    scheduler = pipe.scheduler
    scheduler.set_timesteps(steps, device=latents.device)
    timesteps, _ = pipe.get_timesteps(steps, scheduler.timesteps, strength, latents.device)
    first = timesteps[:1].repeat(latents.shape[0])
    if hasattr(scheduler, "add_noise"):
        return scheduler.add_noise(latents, noise, first)
    return scheduler.scale_noise(latents, first, noise)
