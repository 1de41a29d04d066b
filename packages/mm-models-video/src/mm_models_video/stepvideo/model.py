"""StepVideo: Step-Video T2V / TI2V as the frozen VAE v2 and text encoders, a trained transformer, the diffusion."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn

from mm_data.transforms import normalize_pixels
from mm_models_video.flow_matching import NoiseToDataFlowMatching
from mm_models_video.frozen import FrozenEncoders
from mm_models_video.stepvideo.text_encoders import StepVideoTextEncoders
from mm_models_video.stepvideo.transformer import StepVideoModel, StepVideoTransformerBlock
from mm_models_video.stepvideo.vae import SPATIAL_STRIDE, TEMPORAL_STRIDE, StepVideoVAE

# The first-frame condition of TI2V is noised with σ = exp(N(-3, 0.5)) before encoding (MindSpeed-MM's I2V processor).
IMAGE_NOISE_MEAN, IMAGE_NOISE_STD = -3.0, 0.5
# A sample's seed draws its diffusion noise; seed + 1 its TI2V first-frame noise, seed + 2 its VAE posterior sample.
POSTERIOR_SEED_OFFSET = 2
TEXT_FEATURES = ("prompt_embeds", "prompt_mask", "clip_embeds")


class Carry(NamedTuple):
    """What passes through the transformer blocks (and between pipeline stages)."""

    hidden: torch.Tensor
    context: torch.Tensor
    keep: torch.Tensor
    modulation: torch.Tensor
    embedded_timestep: torch.Tensor
    rope_cos: torch.Tensor
    rope_sin: torch.Tensor
    target: torch.Tensor


def run_block(block: StepVideoTransformerBlock, carry: Carry | tuple[torch.Tensor, ...]) -> Carry:
    """One transformer block on the carry's tokens; the conditions pass on unchanged."""
    carry = Carry(*carry)
    hidden = block(carry.hidden, carry.context, carry.keep, carry.modulation, carry.rope_cos, carry.rope_sin)
    return carry._replace(hidden=hidden)


def text_mask(prompt_mask: torch.Tensor, clip_len: int) -> torch.Tensor:
    """The cross-attention mask of [CLIP tokens, LLM tokens]: every CLIP token, then the LLM's own mask."""
    ones = torch.ones(prompt_mask.shape[0], clip_len, dtype=prompt_mask.dtype, device=prompt_mask.device)
    return torch.cat([ones, prompt_mask], dim=1)


class StepVideo(FrozenEncoders):
    """ae (StepVideoVAE) + text_encoder (step_llm and hunyuan_clip) + predictor (StepVideoModel) + diffusion.

    Only the predictor trains. ``task`` is ``t2v`` or ``i2v`` (TI2V: the noised first frame's latent on the
    channel axis and a motion score). Latents are [B, F, C, H, W], unnormalized (the release's scale is 1).
    """

    def __init__(
        self,
        ae: StepVideoVAE,
        text_encoder: StepVideoTextEncoders,
        predictor: StepVideoModel,
        diffusion: NoiseToDataFlowMatching,
        task: str = "t2v",
        motion_score: float = 5.0,
        do_sample: bool = True,
        external: Sequence[str] = (),
    ) -> None:
        super().__init__(ae, text_encoder, norm_latents=False, do_sample=do_sample, external=external)
        self.predictor = predictor
        self.diffusion = diffusion
        self.task = task
        self.motion_score = motion_score

    @property
    def vae_strides(self) -> tuple[int, int]:
        """The frames and pixels one latent spans: 17 frames per 3 latents (about 8), 16 pixels."""
        return TEMPORAL_STRIDE, SPATIAL_STRIDE

    @torch.no_grad()
    def encode_video(
        self, video: torch.Tensor, generator: torch.Generator | None = None, seeds: Sequence[int] | None = None
    ) -> torch.Tensor:
        """Pixels [B, 3, T, H, W] (uint8, or float in [-1, 1]) -> float32 latents [B, F, z, H/16, W/16].

        The posterior sample is drawn from ``generator``, or per sample from its seed (+ POSTERIOR_SEED_OFFSET), so
        it does not depend on when or where the clip is encoded. With ``vae_cp_group`` the encode is split over it.
        """
        pixels = normalize_pixels(video).transpose(1, 2)
        if seeds is not None:
            generator = [torch.Generator(video.device).manual_seed(seed + POSTERIOR_SEED_OFFSET) for seed in seeds]
        return self.ae.encode(pixels, sample=self.do_sample, generator=generator, group=self.vae_cp_group).float()

    @torch.no_grad()
    def encode_image_condition(self, video: torch.Tensor, latents: torch.Tensor, seeds: Sequence[int]) -> torch.Tensor:
        """TI2V's condition [B, F, z, h, w]: each clip's first frame, noised and encoded, then zero latents."""
        first = normalize_pixels(video[:, :, :1]).transpose(1, 2).float()
        conditions = []
        for i, seed in enumerate(seeds):
            generator = torch.Generator(first.device).manual_seed(seed + 1)
            draw = torch.randn(1 + first[i].numel(), generator=generator, device=first.device)
            sigma = math.exp(IMAGE_NOISE_MEAN + IMAGE_NOISE_STD * draw[0].item())
            noised = first[i : i + 1] + sigma * draw[1:].view_as(first[i : i + 1])
            conditions.append(self.ae.encode(noised, sample=self.do_sample, generator=generator).float())
        return image_condition(torch.cat(conditions), latents.shape[1])

    @torch.no_grad()
    def encode_text(self, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Prompts -> ``{"prompt_embeds", "prompt_mask", "clip_embeds"}`` (see StepVideoTextEncoders)."""
        return self.text_encoder(prompts)

    def encode_inputs(
        self, latents: torch.Tensor | None, text: dict[str, torch.Tensor] | None, image_latents: torch.Tensor | None,
        video: torch.Tensor | None, prompt: Sequence[str] | None, seeds: Sequence[int] | None,
    ) -> dict[str, torch.Tensor]:
        """The latents, text features (TEXT_FEATURES) and TI2V condition the forward trains on: those given, the
        rest encoded from the clip and caption (the random draws from the per-sample ``seeds``)."""
        if latents is None:
            latents = self.encode_video(video, seeds=seeds)
        if text is None:
            encoded = self.encode_text(prompt)
            text = {key: encoded[key] for key in TEXT_FEATURES}
        out = {"latents": latents, **text}
        if self.task == "i2v":
            out["image_latents"] = image_latents if image_latents is not None else self.encode_image_condition(
                video, latents, seeds or [0] * latents.shape[0])
        return out

    def features(self, batch: dict) -> dict:
        """A raw batch with the clip's latents, the caption's features (and TI2V's condition) in place of its
        ``video`` and ``prompt``: what the forward takes, as the encoder engines serve it (a feature batch as it is)."""
        if "video" not in batch:
            return batch
        out = {key: value for key, value in batch.items() if key not in ("video", "prompt")}
        out.update(self.encode_inputs(None, None, None, batch["video"], batch["prompt"],
                                      _host(batch.get("noise_seeds"))))
        return out

    def offloaded(self) -> list[nn.Module]:
        """The encoders interleaved offload keeps on the CPU between its windows: step_llm and hunyuan_clip."""
        return [self.text_encoder]

    def forward(self, **inputs: torch.Tensor) -> dict[str, torch.Tensor | int]:
        """Noise the clip's latents and predict the velocity: ``{"pred", "target", "tokens"}`` (see :meth:`embed`)."""
        carry = self.embed(**inputs)
        for block in self.predictor.transformer_blocks:
            carry = run_block(block, carry)
        return self.predict(carry)

    def embed(
        self,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        prompt_mask: torch.Tensor | None = None,
        clip_embeds: torch.Tensor | None = None,
        image_latents: torch.Tensor | None = None,
        video: torch.Tensor | None = None,
        prompt: Sequence[str] | None = None,
        noise: torch.Tensor | None = None,
        timestep_indices: torch.Tensor | None = None,
        noise_seeds: Sequence[int] | torch.Tensor | None = None,
        clip_mask: torch.Tensor | None = None,
    ) -> Carry:
        """Everything before the blocks: encode (unless given features), noise, the predictor's embeddings.

        Give ``latents`` and the text features (extracted) or ``video`` and ``prompt``. Noise and timestep are drawn
        per sample from ``noise_seeds`` (see flow_matching.noise_seeds) unless given. ``clip_mask`` (encode_text
        gives it, for feature stores) is not read: the transformer attends every CLIP token.
        """
        seeds = _host(noise_seeds)
        text = None if prompt_embeds is None else {
            "prompt_embeds": prompt_embeds, "prompt_mask": prompt_mask, "clip_embeds": clip_embeds}
        encoded = self.encode_inputs(latents, text, image_latents, video, prompt, seeds)
        latents, prompt_embeds, prompt_mask, clip_embeds = (encoded[k] for k in ("latents", *TEXT_FEATURES))
        image_latents = encoded.get("image_latents")
        noise, timestep_indices = self.diffusion.noise_and_indices(latents, noise, timestep_indices, seeds)
        noised, timesteps = self.diffusion.add_noise(latents, noise, timestep_indices)
        tokens, context, keep, modulation, embedded, cos, sin = self.predictor.embed(
            noised, timesteps, prompt_embeds, text_mask(prompt_mask, clip_embeds.shape[1]), clip_embeds,
            image_latents if self.task == "i2v" else None, self.motion_score if self.task == "i2v" else None,
        )
        target = self.diffusion.target(latents, noise)
        # Contiguous: under PP each tensor of the carry is sent to the next stage as it is.
        return Carry(*(t.contiguous() for t in (tokens, context, keep, modulation, embedded, cos, sin, target)))

    def predict(self, carry: Carry) -> dict[str, torch.Tensor | int]:
        """Everything after the blocks: ``{"pred", "target", "tokens"}`` (tokens: the batch's latent patches)."""
        grid = self.predictor.token_grid(carry.target)
        pred = self.predictor.unembed(carry.hidden, carry.embedded_timestep, grid)
        return {"pred": pred, "target": carry.target, "tokens": carry.target.shape[0] * math.prod(grid)}


def _host(seeds: Sequence[int] | torch.Tensor | None) -> list[int] | None:
    return seeds.tolist() if isinstance(seeds, torch.Tensor) else seeds


def image_condition(first_latent: torch.Tensor, frames: int) -> torch.Tensor:
    """The TI2V condition [B, F, z, h, w]: the first frame's latent [B, 1, z, h, w], then zeros."""
    padding = first_latent.new_zeros(first_latent.shape[0], frames - 1, *first_latent.shape[2:])
    return torch.cat([first_latent, padding], dim=1)
