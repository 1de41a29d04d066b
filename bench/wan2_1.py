"""Wan2.1 transformer training step: a plain diffusers loop against mm's wan2_1 plugin, same shape, random weights.

    python bench/wan2_1.py                  # Wan2.1-1.3B, 81×480×832 (latents 16×21×60×104), text 512×4096
    python bench/wan2_1.py --tiny --device cpu   # the tiny flavor on a small clip: checks the script in seconds

Both train only the transformer (the predictor) on one sample of random latents and text embeddings,
as training from extracted features does:

- plain: ``WanTransformer3DModel`` in bf16 with diffusers' ``enable_gradient_checkpointing()``, torch AdamW,
  flow matching (x_t = (1 - σ) x0 + σ ε, MSE against the velocity ε - x0);
- mm: ``mm_core``'s Trainer running the wan2_1 plugin's get_batch, forward_step and loss_func on its WanT2V,
  with the engines of ``MM_OPTIONS`` (recompute of every block, selective by default; ``torch.compile`` of
  each block on an accelerator (``--compile``); bf16 autocast over
  float32 weights, fused AdamW on accelerators, gradient clipping). The predictor is built by the plugin's
  ``build_predictor``; the frozen VAE and UMT5 encoder are the tiny flavor's, which the step never runs
  (a 1.3b build would make a random 5.7B-parameter UMT5-XXL that extracted features do not need).
"""

from __future__ import annotations

import sys

import common
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKLWan, WanTransformer3DModel
from transformers import UMT5Config, UMT5EncoderModel

from mm_core import hookimpl
from mm_core.config import Config
from mm_core.runtime import Runtime
from mm_models_video.encoders import VAE_STRIDES
from mm_models_video.flow_matching import FlowMatching
from mm_models_video.tokenizer import build_char_tokenizer
from mm_models_video.wan2_1.build import build_predictor
from mm_models_video.wan2_1.flavors import get_flavor
from mm_models_video.wan2_1.model import WanT2V

WORKLOAD = "wan2_1"
SHAPES = {"1.3b": (81, 480, 832), "tiny": (9, 32, 32)}

# The engine options of the mm run (a run config's dotted overrides).
MM_OPTIONS = [
    "parallel.fsdp2.recompute_modules=['predictor.blocks.{*}']",
    "training.bf16=true",
]


def latent_shape(flavor_name: str, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
    """(channels, frames, height, width) of the VAE latents of a frames × height × width clip."""
    t, s = VAE_STRIDES["scale_factor_temporal"], VAE_STRIDES["scale_factor_spatial"]
    return get_flavor(flavor_name).predictor["in_channels"], 1 + (frames - 1) // t, height // s, width // s


def video_tokens(flavor_name: str, latents: tuple[int, int, int, int]) -> int:
    """Transformer tokens of one sample: latent frames × (height / patch) × (width / patch)."""
    pt, ph, pw = get_flavor(flavor_name).predictor["patch_size"]
    return (latents[1] // pt) * (latents[2] // ph) * (latents[3] // pw)


def model_flops(flavor_name: str, tokens: int, text_tokens: int) -> float:
    """Forward + backward FLOPs of one sample (3 × forward, recompute not counted).

    Each parameter costs 6 FLOPs per token it is applied to: the text embedder and the cross-attention key and
    value projections see the ``text_tokens``, every other weight the ``tokens`` video tokens (the time
    embedding's one token per sample is left out). Attention adds 12 × layers × hidden × tokens × keys:
    QKᵀ and AV, 2 FLOPs per multiply-add, 3× for backward, over tokens keys (self) and text_tokens (cross).
    With the 1.3B transformer at 32,760 tokens and 512 text tokens that is 8.49e14, the issue's figure;
    the rougher 6 × all parameters × tokens + 12 × layers × tokens² × hidden gives 8.72e14.
    """
    config = get_flavor(flavor_name).predictor
    with torch.device("meta"):
        predictor = WanTransformer3DModel(**config)
    count = lambda modules: sum(p.numel() for m in modules for p in m.parameters())  # noqa: E731
    text_side = count([predictor.condition_embedder.text_embedder]) + count(
        [proj for block in predictor.blocks for proj in (block.attn2.to_k, block.attn2.to_v)]
    )
    video_side = count([predictor]) - count([predictor.condition_embedder]) - count(
        [proj for block in predictor.blocks for proj in (block.attn2.to_k, block.attn2.to_v)]
    )
    hidden = config["num_attention_heads"] * config["attention_head_dim"]
    attention = 12 * config["num_layers"] * hidden * tokens * (tokens + text_tokens)
    return 6.0 * (video_side * tokens + text_side * text_tokens) + attention


def features(flavor_name: str, latents: tuple[int, int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """One sample of random float32 latents [1, C, T, H, W] and text embeddings [1, text_len, text_dim]."""
    flavor = get_flavor(flavor_name)
    generator = torch.Generator().manual_seed(0)
    return (torch.randn(1, *latents, generator=generator),
            torch.randn(1, flavor.text_len, flavor.predictor["text_dim"], generator=generator))


def plain_loop(flavor_name: str, latents: torch.Tensor, embeds: torch.Tensor, device: torch.device):
    """The step a diffusers user writes: bf16 weights, gradient checkpointing, AdamW, flow-matching MSE."""
    torch.manual_seed(0)
    with device:
        model = WanTransformer3DModel(**get_flavor(flavor_name).predictor).to(torch.bfloat16)
    model.enable_gradient_checkpointing()
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    x0 = latents.to(device, torch.bfloat16)
    text = embeds.to(device, torch.bfloat16)

    def step() -> None:
        noise = torch.randn_like(x0)
        sigma = torch.rand((), device=device)
        noised = (1 - sigma) * x0 + sigma * noise
        pred = model(hidden_states=noised, timestep=(sigma * 1000)[None], encoder_hidden_states=text,
                     return_dict=False)[0]
        F.mse_loss(pred.float(), (noise - x0).float()).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


@hookimpl
def model_provider(config: Config, runtime: Runtime) -> WanT2V:
    """The plugin's WanT2V: model.flavor's predictor (``build_predictor``) and the tiny flavor's frozen parts."""
    tiny = get_flavor("tiny")
    diffusion = config.model.diffusion
    with runtime.device:
        return WanT2V(
            ae=AutoencoderKLWan(**tiny.ae),
            text_encoder=UMT5EncoderModel(UMT5Config(**tiny.text_encoder)),
            tokenizer=build_char_tokenizer(),
            predictor=build_predictor(config.model, get_flavor(config.model.flavor)),
            diffusion=FlowMatching(diffusion.num_train_timesteps, float(diffusion.shift), float(diffusion.sigma_min),
                                   diffusion.extra_one_step),
            text_len=get_flavor(config.model.flavor).text_len,
        )


@hookimpl
def datasets_provider(config: Config, runtime: Runtime) -> tuple:
    """Extracted-feature batches of one random sample of the data section's clip shape (the same each step)."""
    param = config.data.dataset_param
    shape = latent_shape(config.model.flavor, param.num_frames, param.max_height, param.max_width)
    latents, embeds = features(config.model.flavor, shape)
    batch = {"latents": latents, "prompt_embeds": embeds, "epoch": torch.tensor([0]), "index": torch.tensor([0])}
    return [batch], None, None


def main(argv: list[str] | None = None) -> list[dict]:
    """Time the configurations the arguments ask for and report them."""
    args = common.parser(__doc__.splitlines()[0]).parse_args(argv)
    device = common.device_of(args.device)
    flavor_name = "tiny" if args.tiny else "1.3b"
    frames, height, width = SHAPES[flavor_name]
    latents = latent_shape(flavor_name, frames, height, width)
    tokens = video_tokens(flavor_name, latents)
    flops = model_flops(flavor_name, tokens, get_flavor(flavor_name).text_len)
    shape = {"flavor": flavor_name, "frames": frames, "height": height, "width": width, "latents": list(latents),
             "tokens": tokens, "text_tokens": get_flavor(flavor_name).text_len, "batch": 1}
    measured = []
    if args.impl in ("both", "plain"):
        common.release(device)
        step = plain_loop(flavor_name, *features(flavor_name, latents), device)
        times = common.time_steps(step, device, args.warmup, args.steps)
        options = {"weights": "bf16", "recompute": "diffusers gradient checkpointing (full)", "optimizer": "AdamW"}
        measured.append(common.measure("plain", times, tokens, flops, device, options))
        del step
    if args.impl in ("both", "mm"):
        common.release(device)
        clip = [f"model.flavor={flavor_name}", f"data.dataset_param.num_frames={frames}",
                f"data.dataset_param.max_height={height}", f"data.dataset_param.max_width={width}"]
        overrides = [*MM_OPTIONS, *common.compile_options(args.compile, device)]
        times = common.trainer_step_times(["wan2_1", sys.modules[__name__]], [*clip, *overrides], device,
                                          args.warmup, args.steps)
        measured.append(common.measure("mm", times, tokens, flops, device, {"overrides": overrides}))
    return common.report(WORKLOAD, measured, device, shape, args)


if __name__ == "__main__":
    main()
