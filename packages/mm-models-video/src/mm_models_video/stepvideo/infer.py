"""``mm infer`` for stepvideo: load an mm checkpoint, a release folder or the model section; write mp4s.

The sampler is the release's: Euler from noise (t = 0) to data (t = 1) over the shifted schedule, classifier-free
guidance ``uncond + scale · (cond - uncond)``; TI2V conditions on the first frame's latent and a motion score.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mm_core.checkpoint import CONFIG_FILE, latest_checkpoint, load_model_state
from mm_core.config import Config, load_file, wrap
from mm_core.errors import CheckpointError, ConfigError
from mm_core.runtime import Runtime
from mm_data.synthetic import write_video
from mm_data.transforms import resize_center_crop
from mm_models_video.flow_matching import NoiseToDataFlowMatching
from mm_models_video.inference_lists import lines_of, output_paths
from mm_models_video.stepvideo import model_json
from mm_models_video.stepvideo.build import build_model
from mm_models_video.stepvideo.data import check_clip
from mm_models_video.stepvideo.flavors import get_flavor
from mm_models_video.stepvideo.model import StepVideo, image_condition, text_mask
from mm_models_video.stepvideo.schema import dtype_of, flavor_name
from mm_models_video.stepvideo.vae import FRAME_LEN, LATENT_LEN, SPATIAL_STRIDE


def resolve_checkpoint(path: Path) -> Path:
    """A DCP checkpoint dir: ``path`` itself, or the newest step under ``path``/checkpoints or ``path``."""
    if (path / ".metadata").is_file():
        return path
    for root in (path / "checkpoints", path):
        newest = latest_checkpoint(root)
        if newest is not None:
            return newest
    raise CheckpointError(
        f"inference.checkpoint {path} is neither an mm checkpoint (step_XXXXXXXX with .metadata), "
        "a run directory holding checkpoints/, nor a Step-Video release folder (transformer/config.json)"
    )


def model_source(config: Config) -> tuple[Config, Path | None]:
    """The model section to build and the mm checkpoint to load into it (None for release weights or none)."""
    path = config.inference.checkpoint
    if path is None:
        return config.model, None
    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointError(f"inference.checkpoint {path} does not exist")
    if (path / "transformer" / "config.json").is_file():
        return wrap({**config.model, "from_pretrained": str(path)}), None
    checkpoint = resolve_checkpoint(path)
    if not (checkpoint / CONFIG_FILE).is_file():
        raise CheckpointError(f"checkpoint {checkpoint} has no {CONFIG_FILE} to rebuild its model from")
    return wrap(load_file(checkpoint / CONFIG_FILE)["model"]), checkpoint


def load_image(path: str, height: int, width: int) -> torch.Tensor:
    """The first frame of TI2V: an image file resized to cover and center-cropped, float [1, 1, 3, H, W] in [-1, 1]."""
    if not Path(path).is_file():
        raise ConfigError(f"inference.image {path} does not exist")
    pixels = torch.from_numpy(np.asarray(Image.open(path).convert("RGB")).copy())[None]
    frame = resize_center_crop(pixels, height, width)
    return (frame.float() / 127.5 - 1.0).permute(1, 0, 2, 3)[None]


@torch.no_grad()
def denoise(
    model: StepVideo,
    latents: torch.Tensor,
    text: dict[str, torch.Tensor],
    negative: dict[str, torch.Tensor] | None,
    steps: int,
    guidance_scale: float,
    shift: float,
    condition: torch.Tensor | None = None,
    motion_score: float | None = None,
) -> torch.Tensor:
    """Latents [B, F, C, h, w] from noise ``latents`` by Euler steps of the predicted velocity (with CFG)."""
    sigmas = NoiseToDataFlowMatching(shift=shift).sampling_sigmas(steps, latents.device)
    batch = latents.shape[0]
    texts = [text] if negative is None else [text, negative]
    embeds = torch.cat([t["prompt_embeds"].expand(batch, -1, -1) for t in texts])
    clip = torch.cat([t["clip_embeds"].expand(batch, -1, -1) for t in texts])
    mask = torch.cat([text_mask(t["prompt_mask"], t["clip_embeds"].shape[1]).expand(batch, -1) for t in texts])
    dtype = model.predictor.pos_embed.proj.weight.dtype
    if condition is not None:
        condition = condition.repeat(len(texts), 1, 1, 1, 1).to(dtype)
    for k in range(steps):
        model_input = latents.repeat(len(texts), 1, 1, 1, 1).to(dtype)
        time = (1 - sigmas[k]).expand(model_input.shape[0])
        velocity = model.predictor(
            model_input, embeds.to(dtype), clip.to(dtype), time, mask, condition, motion_score, return_dict=False
        ).float()
        if negative is not None:
            cond, uncond = velocity.chunk(2)
            velocity = uncond + guidance_scale * (cond - uncond)
        latents = NoiseToDataFlowMatching.step(latents, velocity, sigmas[k], sigmas[k + 1])
    return latents


def first_frames(inf: Config, count: int) -> list[str]:
    """Per prompt, the TI2V first-frame image: ``inference.image``, or the lines of the .txt file it names."""
    if not inf.image:
        raise ConfigError("inference.image is not set: TI2V (model.task=i2v) needs the first frame, --image FILE")
    images = lines_of(str(inf.image), "image")
    images = images * count if len(images) == 1 else images
    if len(images) != count:
        raise ConfigError(f"inference.image lists {len(images)} images for {count} prompts")
    return images


def generate(config: Config, runtime: Runtime) -> str:
    """Sample ``num_inference_videos_per_sample`` videos for the prompt (or each line of a prompt .txt file, with
    TI2V its first frame); write them as mp4. A MindSpeed-MM inference model.json's run keys fill the section."""
    inf = model_json.inference_values(config)
    model_config, checkpoint = model_source(config)
    model_config = model_json.inference_task(model_config)
    flavor = get_flavor(flavor_name(model_config))
    task = model_config.task
    frames = inf.num_frames or flavor.num_frames[task]
    height, width = inf.height or flavor.height, inf.width or flavor.width
    count = inf.num_inference_videos_per_sample
    if not isinstance(count, int) or count < 1:
        raise ConfigError(f"inference.num_inference_videos_per_sample must be a positive integer, got {count!r}")
    prompts = lines_of(str(inf.prompt), "prompt")
    images = first_frames(inf, len(prompts)) if task == "i2v" else [None] * len(prompts)
    model = build_model(model_config)
    if checkpoint is not None:
        load_model_state(checkpoint, model)
    model = model.eval().to(runtime.device)
    check_clip(frames, height, width, model.predictor.config.patch_size, "inference")
    dtype = dtype_of(model_config.predictor.dtype, flavor, "model.predictor.dtype")
    for tensor in (*model.predictor.parameters(), *model.predictor.buffers()):
        tensor.data = tensor.data.to(dtype)
    guided = inf.guidance_scale > 1.0
    negative = model.encode_text([inf.negative_prompt]) if guided else None
    generator = torch.Generator(runtime.device).manual_seed(inf.seed)
    shape = (count, frames // FRAME_LEN * LATENT_LEN, model.ae.z_channels,
             height // SPATIAL_STRIDE, width // SPATIAL_STRIDE)
    motion = float(inf.motion_score if inf.motion_score is not None else model_config.motion_score)
    shift = float(inf.time_shift if inf.time_shift is not None else model_config.diffusion.shift)
    outputs = iter(output_paths(inf.output, len(prompts), count))
    paths = []
    for prompt, image in zip(prompts, images):
        text = model.encode_text([prompt])
        noise = torch.randn(shape, generator=generator, device=runtime.device)
        condition = None
        if image is not None:
            first = model.ae.encode(load_image(image, height, width).to(runtime.device), sample=False).float()
            condition = image_condition(first, shape[1]).expand(count, -1, -1, -1, -1)
        latents = denoise(model, noise, text, negative, inf.steps, inf.guidance_scale, shift, condition,
                          motion if task == "i2v" else None)
        videos = model.ae.decode(latents).float()
        pixels = ((videos.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 1, 3, 4, 2).cpu().numpy()
        paths.extend(write_video(next(outputs), pixels[i], inf.fps or flavor.fps) for i in range(count))
    source = checkpoint or model_config.from_pretrained or f"untrained {flavor_name(model_config)} model"
    written = ", ".join(str(p) for p in paths)
    return f"wrote {written}: {frames} frames of {width}x{height} each, from {source}"
