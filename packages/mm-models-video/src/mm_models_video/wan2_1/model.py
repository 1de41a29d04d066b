"""WanT2V: Wan2.1 text-to-video as a frozen VAE and UMT5 encoder, a trained transformer and flow-matching diffusion."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import torch
from diffusers import AutoencoderKLWan, WanPipeline, WanTransformer3DModel
from diffusers.pipelines.wan.pipeline_wan import prompt_clean
from torch import nn
from transformers import PreTrainedTokenizerBase, UMT5EncoderModel

from mm_models_video.flow_matching import FlowMatching
from mm_models_video.frozen import FrozenEncoders


class Carry(NamedTuple):
    """What passes through the transformer blocks (and between pipeline stages): the tokens and their conditions."""

    hidden: torch.Tensor
    context: torch.Tensor
    timestep_proj: torch.Tensor
    rope_cos: torch.Tensor
    rope_sin: torch.Tensor
    temb: torch.Tensor
    target: torch.Tensor


def run_block(block: nn.Module, carry: Carry | tuple[torch.Tensor, ...]) -> Carry:
    """One WanTransformerBlock on the carry's tokens; the conditions pass on unchanged."""
    carry = Carry(*carry)
    hidden = block(carry.hidden, carry.context, carry.timestep_proj, (carry.rope_cos, carry.rope_sin))
    return carry._replace(hidden=hidden)


class WanT2V(FrozenEncoders):
    """ae (AutoencoderKLWan) + text_encoder (UMT5EncoderModel) + predictor (WanTransformer3DModel) + diffusion.

    Only the predictor trains. A frozen part named in ``external`` was loaded from pretrained weights:
    it is left out of ``state_dict`` (training checkpoints hold only what cannot be reloaded) and its
    absence is accepted when loading one (see FrozenEncoders).
    """

    def __init__(
        self,
        ae: AutoencoderKLWan,
        text_encoder: UMT5EncoderModel,
        tokenizer: PreTrainedTokenizerBase,
        predictor: WanTransformer3DModel,
        diffusion: FlowMatching,
        text_len: int,
        norm_latents: bool = True,
        do_sample: bool = False,
        external: Sequence[str] = (),
    ) -> None:
        super().__init__(ae, text_encoder, norm_latents, do_sample, external)
        self.predictor = predictor
        self.tokenizer = tokenizer
        self.diffusion = diffusion
        self.text_len = text_len

    def tokenize(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and attention mask [B, text_len] of the cleaned prompts, as WanPipeline makes them."""
        tokens = self.tokenizer(
            [prompt_clean(p) for p in prompts],
            padding="max_length",
            max_length=self.text_len,
            truncation=True,
            add_special_tokens=True,
            return_attention_mask=True,
            return_tensors="pt",
        )
        return tokens.input_ids, tokens.attention_mask

    @torch.no_grad()
    def encode_text(self, prompts: Sequence[str]) -> torch.Tensor:
        """Prompts -> float32 UMT5 embeddings [B, text_len, D], zero past each prompt's end (as WanPipeline)."""
        ids, mask = (t.to(self.text_encoder.device) for t in self.tokenize(prompts))
        hidden = self.text_encoder(ids, mask).last_hidden_state
        return (hidden * mask.unsqueeze(-1).to(hidden.dtype)).float()

    def forward(
        self,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        video: torch.Tensor | None = None,
        prompt: Sequence[str] | None = None,
        noise: torch.Tensor | None = None,
        timestep_indices: torch.Tensor | None = None,
        noise_seeds: Sequence[int] | torch.Tensor | None = None,
        **conditions: torch.Tensor | None,
    ) -> dict[str, torch.Tensor | int]:
        """Noise the clip's latents and predict the velocity: ``{"pred", "target", "tokens"}``.

        Give ``latents`` and ``prompt_embeds`` (precomputed features) or ``video`` and ``prompt``
        (encoded here). Without ``noise`` and ``timestep_indices`` they are drawn per sample from
        ``noise_seeds`` (see ``diffusion.noise_seeds``), else from the global RNG. ``conditions`` go to
        :meth:`embed` as they are (I2V's image tokens and condition latents). It runs :meth:`embed`, each block
        through :func:`run_block` and :meth:`predict`, as pipeline stages do.
        """
        carry = self.embed(latents, prompt_embeds, video, prompt, noise, timestep_indices, noise_seeds, **conditions)
        for block in self.predictor.blocks:
            carry = run_block(block, carry)
        return self.predict(carry)

    def features(self, batch: dict) -> dict:
        """A raw batch with the clip's latents and the caption's embeddings in place of its ``video`` and
        ``prompt``: what the forward takes, as the encoder engines serve it (a feature batch as it is)."""
        if "video" not in batch:
            return batch
        out = {key: value for key, value in batch.items() if key not in ("video", "prompt")}
        out.update(latents=self.encode_video(batch["video"]), prompt_embeds=self.encode_text(batch["prompt"]))
        return out

    def offloaded(self) -> list[nn.Module]:
        """The encoders interleaved offload keeps on the CPU between its windows: the text encoder."""
        return [self.text_encoder]

    def embed(
        self,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        video: torch.Tensor | None = None,
        prompt: Sequence[str] | None = None,
        noise: torch.Tensor | None = None,
        timestep_indices: torch.Tensor | None = None,
        noise_seeds: Sequence[int] | torch.Tensor | None = None,
    ) -> Carry:
        """Everything before the transformer blocks: encode, noise, then the predictor's RoPE and embeddings.

        The predictor's part is :meth:`embed_tokens` (Wan2.1: one timestep per sample).
        """
        if latents is None:
            latents = self.encode_video(video)
        if prompt_embeds is None:
            prompt_embeds = self.encode_text(prompt)
        noise, timestep_indices = self.diffusion.noise_and_indices(latents, noise, timestep_indices, noise_seeds)
        noised, timesteps = self.diffusion.add_noise(latents, noise, timestep_indices)
        return self.embed_tokens(noised, timesteps, prompt_embeds, self.diffusion.target(latents, noise))

    def embed_tokens(
        self,
        hidden_states: torch.Tensor,
        timesteps: torch.Tensor,
        prompt_embeds: torch.Tensor,
        target: torch.Tensor,
        image_embeds: torch.Tensor | None = None,
    ) -> Carry:
        """The predictor's RoPE, patch and condition embeddings of its input latents: diffusers'
        ``WanTransformer3DModel.forward`` up to its block loop (the image tokens, if any, before the text)."""
        predictor = self.predictor
        rope_cos, rope_sin = predictor.rope(hidden_states)
        hidden = predictor.patch_embedding(hidden_states).flatten(2).transpose(1, 2).contiguous()
        embedded = predictor.condition_embedder(timesteps, prompt_embeds, image_embeds)
        temb, timestep_proj, context, image_context = embedded
        if image_context is not None:
            context = torch.cat([image_context, context], dim=1)
        return Carry(hidden, context, timestep_proj.unflatten(1, (6, -1)), rope_cos, rope_sin, temb, target)

    def patch_grid(self, latents: torch.Tensor) -> tuple[int, int, int]:
        """The (frames, height, width) of the transformer's token grid for latents [B, z, F, H, W]."""
        patch = self.predictor.config.patch_size
        return tuple(size // p for size, p in zip(latents.shape[2:], patch))

    def predict(self, carry: Carry) -> dict[str, torch.Tensor | int]:
        """Everything after the blocks: the predictor's modulated output norm, projection and unpatchify.

        Returns the loss's inputs ``{"pred", "target", "tokens"}``; ``tokens`` counts the batch's latent patches.
        """
        predictor = self.predictor
        hidden, target = carry.hidden, carry.target
        shift, scale = (predictor.scale_shift_table + carry.temb.unsqueeze(1)).chunk(2, dim=1)
        hidden = (predictor.norm_out(hidden.float()) * (1 + scale) + shift).type_as(hidden)
        hidden = predictor.proj_out(hidden)
        batch, grid, patch = target.shape[0], self.patch_grid(target), predictor.config.patch_size
        pred = hidden.reshape(batch, *grid, *patch, -1).permute(0, 7, 1, 4, 2, 5, 3, 6)
        pred = pred.flatten(6, 7).flatten(4, 5).flatten(2, 3)
        return {"pred": pred, "target": target, "tokens": batch * math.prod(grid)}

    def set_attention_processor(self, processor: object) -> None:
        """Swap the predictor's attention (a diffusers attention processor), e.g. for context parallelism."""
        self.predictor.set_attn_processor(processor)

    def pipeline(self) -> WanPipeline:
        """A diffusers WanPipeline over these very modules, with the Euler scheduler of this diffusion."""
        return WanPipeline(
            tokenizer=self.tokenizer,
            text_encoder=self.text_encoder,
            vae=self.ae,
            scheduler=self.diffusion.sampling_scheduler(),
            transformer=self.predictor,
        )

    def save_pretrained(self, path: str | Path) -> None:
        """Write the diffusers layout: model_index.json, transformer/, vae/, text_encoder/, tokenizer/, scheduler/."""
        self.pipeline().save_pretrained(str(path))

