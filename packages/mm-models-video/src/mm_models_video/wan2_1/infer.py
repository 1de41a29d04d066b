"""``mm infer`` for wan2_1: load an mm checkpoint, a diffusers directory or the model section, and write mp4s (T2V
from prompts, v2v from prompts and source clips, I2V from prompts and first frames, FLF2V and last frames)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from PIL import Image

from mm_core.checkpoint import CONFIG_FILE, latest_checkpoint, load_model_state
from mm_core.config import Config, load_file, wrap
from mm_core.errors import CheckpointError, ConfigError
from mm_core.runtime import Runtime
from mm_data.synthetic import write_video
from mm_data.transforms import resize_center_crop
from mm_models_video import clip_shape
from mm_models_video.inference_lists import lines_of, output_paths
from mm_models_video.wan2_1.build import build_model
from mm_models_video.wan2_1.flavors import Flavor, flavor_of, get_flavor, task_of
from mm_models_video.wan2_1.flf2v import is_flf2v
from mm_models_video.wan2_1.i2v import WanI2V
from mm_models_video.wan2_1.mindspeed import inference_values, unipc_scheduler
from mm_models_video.wan2_1.model import WanT2V
from mm_models_video.wan2_1.schema import check_clip, dtype_of
from mm_models_video.wan2_1.v2v import check_strength, noised_latents, source_clip, source_path, video_pipeline


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
        "a run directory holding checkpoints/, nor a diffusers directory (model_index.json)"
    )


def model_source(config: Config) -> tuple[Config, Path | None]:
    """The model section to build and the mm checkpoint to load into it (None for diffusers weights or none)."""
    path = config.inference.checkpoint
    if path is None:
        return config.model, None
    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointError(f"inference.checkpoint {path} does not exist")
    if (path / "model_index.json").is_file():
        transformer = load_file(path / "transformer" / "config.json")
        flavor = flavor_of(transformer) or config.model.flavor
        task = task_of(transformer)
        predictor = {**config.model.predictor, "model_type": None}
        return wrap({**config.model, "flavor": flavor, "task": task, "from_pretrained": str(path),
                     "predictor": predictor}), None
    checkpoint = resolve_checkpoint(path)
    if not (checkpoint / CONFIG_FILE).is_file():
        raise CheckpointError(f"checkpoint {checkpoint} has no {CONFIG_FILE} to rebuild its model from")
    return wrap(load_file(checkpoint / CONFIG_FILE)["model"]), checkpoint


def load_model(model_config: Config, checkpoint: Path | None) -> WanT2V:
    """Build the model and, for an mm checkpoint, load its trained weights."""
    model = build_model(model_config)
    if checkpoint is not None:
        load_model_state(checkpoint, model)
    return model.eval()


def cast_keeping_fp32_modules(module: torch.nn.Module, dtype: torch.dtype) -> None:
    """Cast floating-point weights to ``dtype``, keeping diffusers' ``_keep_in_fp32_modules`` like from_pretrained."""
    keep = tuple(getattr(module, "_keep_in_fp32_modules", None) or ())
    for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
        if tensor.is_floating_point() and not any(k in name for k in keep):
            tensor.data = tensor.data.to(dtype)


def per_prompt(value: str, key: str, count: int) -> list[str]:
    """``value``'s lines (a .txt file) or ``value``, one for all ``count`` prompts or one per prompt."""
    items = lines_of(value, key)
    if len(items) == 1:
        items = items * count
    if len(items) != count:
        raise ConfigError(f"inference.{key} lists {len(items)} for {count} prompts")
    return items


def frame_images(inf: Config, count: int, flf2v: bool, dual_image: bool) -> list[tuple[str, str | None]]:
    """Per prompt, the first frame and, for an FLF2V model, the last: ``image`` (FLF2V: its lines "first, last",
    as MindSpeed-MM's ``dual_image`` lists them, or with ``last_image``)."""
    if not inf.image:
        raise ConfigError("inference.image is not set: Wan2.1 I2V (model.task=i2v) needs the first frame, --image FILE")
    images = per_prompt(str(inf.image), "image", count)
    if not flf2v:
        if inf.last_image or dual_image:
            given = "inference.last_image" if inf.last_image else "model.dual_image"
            raise ConfigError(f"{given} needs an FLF2V model (model.predictor.model_type flf2v, a transformer with "
                              "pos_embed_seq_len); this I2V model takes the first frame only")
        return [(image, None) for image in images]
    if inf.last_image:
        return list(zip(images, per_prompt(str(inf.last_image), "last_image", count)))
    pairs = [tuple(part.strip() for part in image.split(",")) for image in images]
    if any(len(pair) != 2 for pair in pairs):
        raise ConfigError("an FLF2V model needs the first and last frames: inference.last_image, or inference.image "
                          f"lines 'first.png, last.png' (MindSpeed-MM's dual_image), got {inf.image!r}")
    return pairs


def load_image(path: str, height: int, width: int, key: str = "image") -> Image.Image:
    """An image file (``inference.<key>``) resized to cover ``height`` × ``width`` and center-cropped, as the training
    clips are."""
    if not Path(path).expanduser().is_file():
        raise ConfigError(f"inference.{key} {path} does not exist")
    pixels = torch.from_numpy(np.asarray(Image.open(Path(path).expanduser()).convert("RGB")).copy())
    frame = resize_center_crop(pixels[None], height, width)[:, 0]
    return Image.fromarray(frame.permute(1, 2, 0).numpy())


def sampling_scheduler(model: WanT2V, flavor: Flavor, model_config: Config, flow_shift: float | None):
    """T2V: the Euler scheduler at the training shift; I2V: UniPC at MindSpeed-MM's flow shift (``flow_shift`` when
    given; the training shift when neither is set). A MindSpeed-MM inference model.json's UniPCMultistepScheduler
    diffusion section is that sampler, for either task."""
    unipc = unipc_scheduler(model_config.diffusion, model.diffusion.num_train_timesteps)
    if unipc is not None:
        return UniPCMultistepScheduler.from_config(unipc.config, flow_shift=flow_shift) if flow_shift else unipc
    if isinstance(model, WanI2V):
        return UniPCMultistepScheduler(
            num_train_timesteps=model.diffusion.num_train_timesteps, prediction_type="flow_prediction",
            use_flow_sigmas=True, flow_shift=flow_shift or flavor.i2v_flow_shift or float(model_config.diffusion.shift),
        )
    if flow_shift:
        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=model.diffusion.num_train_timesteps,
                                               shift=flow_shift)
    return model.diffusion.sampling_scheduler()


def sampling_pipeline(model: WanT2V, scheduler: SchedulerMixin, video: bool):
    """WanImageToVideoPipeline (I2V, FLF2V), WanVideoToVideoPipeline (T2V with a source video) or WanPipeline."""
    if isinstance(model, WanI2V):
        pipe = model.image_pipeline(scheduler)
    elif video:
        pipe = video_pipeline(model, scheduler)
    else:
        pipe = model.pipeline()
        pipe.scheduler = scheduler
    pipe.set_progress_bar_config(disable=True)
    return pipe


def conditions(inf: Config, model: WanT2V, count: int, clip: tuple[int, int, int], dual_image: bool) -> list[dict]:
    """Per prompt, the pipeline's inputs beyond the text: the ``clip`` (frames, height, width) and, I2V, the first
    frame (FLF2V: and the last), or for v2v the source video's path (``video``: read when its turn comes)."""
    num_frames, height, width = clip
    if isinstance(model, WanI2V):
        if inf.video:
            raise ConfigError("inference.video (v2v) needs a T2V model; this one is I2V (model.task=i2v)")
        pairs = frame_images(inf, count, is_flf2v(model.predictor), dual_image)
        return [{"num_frames": num_frames, "height": height, "width": width, "image": load_image(first, height, width),
                 **({"last_image": load_image(last, height, width, "last_image")} if last else {})}
                for first, last in pairs]
    if not inf.video:
        return [{"num_frames": num_frames, "height": height, "width": width}] * count
    return [{"video": source_path(path)} for path in per_prompt(str(inf.video), "video", count)]


def generate(config: Config, runtime: Runtime) -> str:
    """Sample ``num_inference_videos_per_sample`` videos for the prompt (or each line of a prompt .txt file) and its
    first (and, FLF2V, last) frame or, v2v, its source clip, with WanPipeline / WanImageToVideoPipeline /
    WanVideoToVideoPipeline; write them as mp4."""
    inf = inference_values(config)
    model_config, checkpoint = model_source(config)
    flavor = get_flavor(model_config.flavor)
    task = model_config.task
    num_frames = inf.num_frames or flavor.clip_frames(task)
    default_height, default_width = flavor.clip_size(task)
    height, width = inf.height or default_height, inf.width or default_width
    videos = inf.num_inference_videos_per_sample
    if not isinstance(videos, int) or videos < 1:
        raise ConfigError(f"inference.num_inference_videos_per_sample must be a positive integer, got {videos!r}")
    if inf.video:
        check_strength(inf.strength, inf.steps)
    prompts = lines_of(str(inf.prompt), "prompt")
    model = load_model(model_config, checkpoint).to(runtime.device)
    check_clip(model, model_config.flavor, num_frames, height, width, "inference")
    inputs = conditions(inf, model, len(prompts), (num_frames, height, width), bool(config.model.dual_image))
    cast_keeping_fp32_modules(model.predictor, dtype_of(model_config.predictor.dtype, flavor, "model.predictor.dtype"))
    guided = inf.guidance_scale > 1.0
    pipe = sampling_pipeline(model, sampling_scheduler(model, flavor, model_config, inf.flow_shift), bool(inf.video))
    generator = torch.Generator().manual_seed(inf.seed)
    outputs = iter(output_paths(inf.output, len(prompts), videos))
    multiple = clip_shape.clip_factors(model.vae_strides, model.predictor.config.patch_size)[1]
    written, shapes = [], []
    for prompt, condition in zip(prompts, inputs):
        pixels = None
        if "video" in condition:
            pixels = source_clip(condition["video"], inf.start_frame, num_frames, (height, width), multiple)
            condition = {"height": pixels.shape[-2], "width": pixels.shape[-1], "strength": inf.strength}
        with torch.no_grad():
            embeds = model.encode_text([prompt])
            negative = model.encode_text([inf.negative_prompt]) if guided else None
            for _ in range(videos):
                kwargs = dict(condition)
                if pixels is not None:
                    kwargs["latents"] = noised_latents(pipe, model, pixels, inf.steps, inf.strength, generator)
                frames = pipe(
                    prompt_embeds=embeds,
                    negative_prompt_embeds=negative,
                    num_inference_steps=inf.steps,
                    guidance_scale=inf.guidance_scale,
                    generator=generator,
                    output_type="np",
                    **kwargs,
                ).frames[0]
                video = np.clip(np.round(frames * 255.0), 0, 255).astype(np.uint8)
                written.append(write_video(next(outputs), video, inf.fps or flavor.fps))
                shapes.append(f"{video.shape[0]} frames of {video.shape[2]}x{video.shape[1]}")
    source = checkpoint or model_config.from_pretrained or f"untrained {model_config.flavor} model"
    names = ", ".join(str(p) for p in written)
    return f"wrote {names}: {', '.join(dict.fromkeys(shapes))} from {source}"
