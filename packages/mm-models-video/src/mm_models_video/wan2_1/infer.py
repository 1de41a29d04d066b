"""``mm infer`` for wan2_1: load an mm checkpoint, a diffusers directory or the model section, and write an mp4."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mm_core.checkpoint import CONFIG_FILE, latest_checkpoint, load_model_state
from mm_core.config import Config, load_file, wrap
from mm_core.errors import CheckpointError
from mm_core.runtime import Runtime
from mm_data.synthetic import write_video
from mm_models_video.wan2_1.build import build_model
from mm_models_video.wan2_1.flavors import flavor_of, get_flavor
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
        return wrap({**config.model, "flavor": flavor, "from_pretrained": str(path)}), None
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


def generate(config: Config, runtime: Runtime) -> str:
    """Sample one video for the inference section's prompt with WanPipeline and write it as mp4."""
    inf = config.inference
    model_config, checkpoint = model_source(config)
    flavor = get_flavor(model_config.flavor)
    num_frames = inf.num_frames or flavor.num_frames
    height, width = inf.height or flavor.height, inf.width or flavor.width
    model = load_model(model_config, checkpoint).to(runtime.device)
    check_clip(model, model_config.flavor, num_frames, height, width, "inference")
    cast_keeping_fp32_modules(model.predictor, dtype_of(model_config.predictor.dtype, flavor, "model.predictor.dtype"))
    guided = inf.guidance_scale > 1.0
    pipe = model.pipeline()
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        frames = pipe(
            prompt_embeds=model.encode_text([inf.prompt]),
            negative_prompt_embeds=model.encode_text([inf.negative_prompt]) if guided else None,
            num_frames=num_frames,
            height=height,
            width=width,
            num_inference_steps=inf.steps,
            guidance_scale=inf.guidance_scale,
            generator=torch.Generator().manual_seed(inf.seed),
            output_type="np",
        ).frames[0]
    video = np.clip(np.round(frames * 255.0), 0, 255).astype(np.uint8)
    output = write_video(inf.output, video, inf.fps or flavor.fps)
    source = checkpoint or model_config.from_pretrained or f"untrained {model_config.flavor} model"
    return f"wrote {output}: {len(video)} frames of {width}x{height} from {source}"
