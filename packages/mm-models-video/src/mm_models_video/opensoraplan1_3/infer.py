"""``mm infer`` for opensoraplan1_3: v1.3's sampler (Euler ancestral, v-prediction, CFG) to an mp4, T2V and I2V."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mm_core.checkpoint import CONFIG_FILE, latest_checkpoint, load_model_state
from mm_core.config import Config, load_file, wrap
from mm_core.errors import CheckpointError, ConfigError
from mm_core.runtime import Runtime
from mm_data.synthetic import write_video
from mm_data.transforms import resize_center_crop
from mm_models_video import clip_shape
from mm_models_video.inference_lists import lines_of, output_paths
from mm_models_video.opensoraplan1_3.build import build_model
from mm_models_video.opensoraplan1_3.flavors import flavor_name, model_flavor
from mm_models_video.opensoraplan1_3.inpaint import OpenSoraPlanI2V, frame_mask
from mm_models_video.opensoraplan1_3.mindspeed import inference_model, inference_section
from mm_models_video.opensoraplan1_3.model import OpenSoraPlanT2V
from mm_models_video.opensoraplan1_3.schema import dtype_of


def resolve_checkpoint(path: Path) -> Path:
    """A DCP checkpoint dir: ``path`` itself, or the newest step under ``path``/checkpoints or ``path``."""
    if (path / ".metadata").is_file():
        return path
    for root in (path / "checkpoints", path):
        newest = latest_checkpoint(root)
        if newest is not None:
            return newest
    raise CheckpointError(
        f"inference.checkpoint {path} is neither an mm checkpoint (step_XXXXXXXX with .metadata) "
        "nor a run directory holding checkpoints/"
    )


def model_source(config: Config) -> tuple[Config, Path | None]:
    """The model section to build and the mm checkpoint to load into it (None: the model section's weights)."""
    path = config.inference.checkpoint
    if path is None:
        return inference_model(config), None
    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointError(f"inference.checkpoint {path} does not exist")
    checkpoint = resolve_checkpoint(path)
    if not (checkpoint / CONFIG_FILE).is_file():
        raise CheckpointError(f"checkpoint {checkpoint} has no {CONFIG_FILE} to rebuild its model from")
    return wrap(load_file(checkpoint / CONFIG_FILE)["model"]), checkpoint


def read_image(path: str | Path, height: int, width: int) -> torch.Tensor:
    """An image file as uint8 [3, 1, height, width], resized to cover and center-cropped."""
    from PIL import Image

    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"inference.image {path} does not exist")
    pixels = torch.from_numpy(np.asarray(Image.open(path).convert("RGB")).copy())
    return resize_center_crop(pixels[None], height, width)


def prompts_of(inf: Config) -> list[str]:
    """The prompts to generate: ``prompt``, or one per line of the .txt file it names."""
    return lines_of(str(inf.prompt), "prompt")


def condition_images(inf: Config, count: int) -> list[list[str]]:
    """Per prompt, its I2V condition images: ``image`` (or the seeds' ``conditional_pixel_values_path``), one or two
    comma-separated paths, or a .txt file of such lines, one per prompt."""
    value = inf.image or inf.conditional_pixel_values_path
    if not value:
        raise ConfigError("inference.image is needed for model.task i2v (the first frame, --image FILE; "
                          "--image FIRST,LAST for a transition)")
    lines = lines_of(str(value), "image")
    if len(lines) == 1:
        lines = lines * count
    if len(lines) != count:
        raise ConfigError(f"inference.image lists {len(lines)} lines of images for {count} prompts")
    groups = [[p.strip() for p in line.split(",") if p.strip()] for line in lines]
    for paths in groups:
        if not 1 <= len(paths) <= 2:
            raise ConfigError(
                f"inference.image takes one image (the first frame) or two (first and last), got {paths}"
            )
    return groups


def image_conditions(model: OpenSoraPlanI2V, paths: list[str], num_frames: int, height: int, width: int,
                     device: torch.device) -> torch.Tensor:
    """The I2V conditions of one image (the first frame kept: mask ``i2v``) or two (first and last: ``transition``)."""
    images = [read_image(path, height, width).to(device) for path in paths]
    video = images[0].new_zeros(3, num_frames, height, width)
    video[:, :1] = images[0]
    if len(images) == 2:
        video[:, -1:] = images[1]
    mask = frame_mask("i2v" if len(images) == 1 else "transition", num_frames, torch.Generator())[None]
    return model.conditions(video[None], mask, None)


@torch.no_grad()
def sample(model: OpenSoraPlanT2V, prompt: str, negative_prompt: str, num_frames: int, height: int, width: int,
           steps: int, guidance_scale: float, seed: int, conditions: torch.Tensor | None = None) -> torch.Tensor:
    """Denoise from Gaussian latents with Euler ancestral and classifier-free guidance; pixels [3, T, H, W] in [-1, 1].

    ``conditions`` (I2V): the masked-clip latents and compressed mask [1, C + 4, t, h, w].
    """
    device = next(model.predictor.parameters()).device
    dtype = next(model.predictor.parameters()).dtype
    temporal, spatial = model.vae_strides
    channels = model.predictor.config.in_channels
    shape = (1, channels, (num_frames - 1) // temporal + 1, height // spatial, width // spatial)
    generator = torch.Generator(device).manual_seed(seed)
    scheduler = model.diffusion.sampling_scheduler()
    scheduler.set_timesteps(steps, device=device)
    latents = torch.randn(shape, generator=generator, device=device) * scheduler.init_noise_sigma
    guided = guidance_scale > 1.0
    embeds, mask = model.encode_text([negative_prompt, prompt] if guided else [prompt])
    embeds = embeds.to(dtype)
    batch = embeds.shape[0]
    extra = None if conditions is None else conditions.to(device, dtype).expand(batch, -1, -1, -1, -1)
    for t in scheduler.timesteps:
        inputs = scheduler.scale_model_input(latents, t).expand(batch, -1, -1, -1, -1).to(dtype)
        if extra is not None:
            inputs = torch.cat([inputs, extra], dim=1)
        timestep = t.expand(batch).to(device)
        pred = model.predictor(inputs, timestep, embeds, mask).float()
        if guided:
            uncond, cond = pred.chunk(2)
            pred = uncond + guidance_scale * (cond - uncond)
        latents = scheduler.step(pred, t, latents, generator=generator).prev_sample
    return model.decode_latents(latents)[0]


def generate(config: Config, runtime: Runtime) -> str:
    """Sample a video for the inference section's prompt (and ``image`` for I2V), or for each line of a prompt .txt
    file (``output`` numbered), and write it as mp4."""
    inf = inference_section(config)
    model_config, checkpoint = model_source(config)
    flavor = model_flavor(model_config)
    num_frames = inf.num_frames or flavor.num_frames
    height, width = inf.height or flavor.height, inf.width or flavor.width
    model = build_model(model_config)
    if checkpoint is not None:
        load_model_state(checkpoint, model)
    model = model.eval().to(runtime.device)
    factors = clip_shape.clip_factors(model.vae_strides, (1, model.predictor.config.patch_size,
                                                          model.predictor.config.patch_size))
    clip_shape.check_clip(num_frames, height, width, factors, "inference", "for OpenSoraPlan (VAE stride × patch)")
    dtype = dtype_of(model_config.predictor.dtype, flavor, "model.predictor.dtype")
    if dtype != torch.float32:
        model.predictor.to(dtype)
    prompts = prompts_of(inf)
    images = condition_images(inf, len(prompts)) if isinstance(model, OpenSoraPlanI2V) else [None] * len(prompts)
    outputs = [Path(path) for path in output_paths(inf.output, len(prompts))]
    for prompt, paths, output in zip(prompts, images, outputs):
        conditions = None if paths is None else image_conditions(model, paths, num_frames, height, width,
                                                                 runtime.device)
        text = inf.prompt_template.format(prompt) if inf.prompt_template else prompt
        pixels = sample(model, text, inf.negative_prompt, num_frames, height, width, inf.steps, inf.guidance_scale,
                        inf.seed, conditions)
        video = ((pixels + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 3, 0).cpu().numpy()
        write_video(output, video, inf.fps or flavor.fps)
    source = checkpoint or model_config.predictor.from_pretrained or f"untrained {flavor_name(model_config)} model"
    written = ", ".join(str(o) for o in outputs)
    return f"wrote {written}: {num_frames} frames of {width}x{height} from {source}"
