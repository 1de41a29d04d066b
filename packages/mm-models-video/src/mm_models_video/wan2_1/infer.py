"""``mm infer`` for wan2_1: load an mm checkpoint, a diffusers directory or the model section, and write mp4s (T2V
from prompts, I2V from prompts and first frames)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler
from PIL import Image

from mm_core.checkpoint import CONFIG_FILE, latest_checkpoint, load_model_state
from mm_core.config import Config, load_file, wrap
from mm_core.errors import CheckpointError, ConfigError
from mm_core.runtime import Runtime
from mm_data.synthetic import write_video
from mm_data.transforms import resize_center_crop
from mm_models_video.wan2_1.build import build_model
from mm_models_video.wan2_1.flavors import Flavor, flavor_of, get_flavor, task_of
from mm_models_video.wan2_1.i2v import WanI2V
from mm_models_video.wan2_1.mindspeed import inference_values, unipc_scheduler
from mm_models_video.wan2_1.model import WanT2V
from mm_models_video.wan2_1.schema import check_clip, dtype_of


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


def lines_of(value: str, key: str) -> list[str]:
    """``value`` itself, or the non-empty lines of the .txt file it names (MindSpeed-MM's prompt and image lists)."""
    if not value.endswith(".txt"):
        return [value]
    path = Path(value).expanduser()
    if not path.is_file():
        raise ConfigError(f"inference.{key} {value} does not exist")
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def first_frames(inf: Config, count: int) -> list[str]:
    """Per prompt, the I2V first-frame image: ``image``, or the lines of the .txt file it names (one per prompt)."""
    if not inf.image:
        raise ConfigError("inference.image is not set: Wan2.1 I2V (model.task=i2v) needs the first frame, --image FILE")
    images = lines_of(str(inf.image), "image")
    if len(images) == 1:
        images = images * count
    if len(images) != count:
        raise ConfigError(f"inference.image lists {len(images)} images for {count} prompts")
    return images


def load_image(path: str, height: int, width: int) -> Image.Image:
    """An image file resized to cover ``height`` × ``width`` and center-cropped, as the training clips are."""
    if not Path(path).expanduser().is_file():
        raise ConfigError(f"inference.image {path} does not exist")
    pixels = torch.from_numpy(np.asarray(Image.open(Path(path).expanduser()).convert("RGB")).copy())
    frame = resize_center_crop(pixels[None], height, width)[:, 0]
    return Image.fromarray(frame.permute(1, 2, 0).numpy())


def output_paths(output: str, prompts: int, per_prompt: int) -> list[str]:
    """``output`` for one video, else ``<stem>_<k><suffix>`` with k = prompt × per_prompt + video (the numbering
    MindSpeed-MM's histogram_generator reads back for DPO data)."""
    if prompts * per_prompt == 1:
        return [output]
    path = Path(output)
    return [str(path.with_name(f"{path.stem}_{k}{path.suffix}")) for k in range(prompts * per_prompt)]


def sampling_pipeline(model: WanT2V, flavor: Flavor, model_config: Config, flow_shift: float | None):
    """T2V: WanPipeline with the Euler scheduler; I2V: WanImageToVideoPipeline with UniPC at MindSpeed-MM's flow shift
    (``flow_shift`` when given; the training shift when neither is set). A MindSpeed-MM inference model.json's
    UniPCMultistepScheduler diffusion section is that sampler, for either task."""
    training_shift = float(model_config.diffusion.shift)
    unipc = unipc_scheduler(model_config.diffusion, model.diffusion.num_train_timesteps)
    if unipc is not None:
        if flow_shift:
            unipc = UniPCMultistepScheduler.from_config(unipc.config, flow_shift=flow_shift)
        pipe = model.image_pipeline(unipc) if isinstance(model, WanI2V) else model.pipeline()
        pipe.scheduler = unipc
    elif isinstance(model, WanI2V):
        shift = flow_shift or flavor.i2v_flow_shift or training_shift
        scheduler = UniPCMultistepScheduler(
            num_train_timesteps=model.diffusion.num_train_timesteps, prediction_type="flow_prediction",
            use_flow_sigmas=True, flow_shift=shift,
        )
        pipe = model.image_pipeline(scheduler)
    else:
        pipe = model.pipeline()
        if flow_shift:
            pipe.scheduler = FlowMatchEulerDiscreteScheduler(
                num_train_timesteps=model.diffusion.num_train_timesteps, shift=flow_shift
            )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate(config: Config, runtime: Runtime) -> str:
    """Sample ``num_inference_videos_per_sample`` videos for the prompt (or each line of a prompt .txt file) and,
    for I2V, its first-frame image, with WanPipeline / WanImageToVideoPipeline; write them as mp4."""
    inf = inference_values(config)
    model_config, checkpoint = model_source(config)
    flavor = get_flavor(model_config.flavor)
    task = model_config.task
    num_frames = inf.num_frames or flavor.clip_frames(task)
    default_height, default_width = flavor.clip_size(task)
    height, width = inf.height or default_height, inf.width or default_width
    per_prompt = inf.num_inference_videos_per_sample
    if not isinstance(per_prompt, int) or per_prompt < 1:
        raise ConfigError(f"inference.num_inference_videos_per_sample must be a positive integer, got {per_prompt!r}")
    prompts = lines_of(str(inf.prompt), "prompt")
    images = first_frames(inf, len(prompts)) if task == "i2v" else [None] * len(prompts)
    model = load_model(model_config, checkpoint).to(runtime.device)
    check_clip(model, model_config.flavor, num_frames, height, width, "inference")
    cast_keeping_fp32_modules(model.predictor, dtype_of(model_config.predictor.dtype, flavor, "model.predictor.dtype"))
    guided = inf.guidance_scale > 1.0
    pipe = sampling_pipeline(model, flavor, model_config, inf.flow_shift)
    generator = torch.Generator().manual_seed(inf.seed)
    outputs = iter(output_paths(inf.output, len(prompts), per_prompt))
    written = []
    for prompt, image in zip(prompts, images):
        kwargs = {"image": load_image(image, height, width)} if image is not None else {}
        with torch.no_grad():
            embeds = model.encode_text([prompt])
            negative = model.encode_text([inf.negative_prompt]) if guided else None
            for _ in range(per_prompt):
                frames = pipe(
                    prompt_embeds=embeds,
                    negative_prompt_embeds=negative,
                    num_frames=num_frames,
                    height=height,
                    width=width,
                    num_inference_steps=inf.steps,
                    guidance_scale=inf.guidance_scale,
                    generator=generator,
                    output_type="np",
                    **kwargs,
                ).frames[0]
                video = np.clip(np.round(frames * 255.0), 0, 255).astype(np.uint8)
                written.append(write_video(next(outputs), video, inf.fps or flavor.fps))
    source = checkpoint or model_config.from_pretrained or f"untrained {model_config.flavor} model"
    names = ", ".join(str(p) for p in written)
    return f"wrote {names}: {num_frames} frames of {width}x{height} from {source}"
