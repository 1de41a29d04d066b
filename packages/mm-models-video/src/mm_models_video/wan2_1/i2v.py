"""WanI2V: Wan2.1 image-to-video, WanT2V conditioned on the clip's first frame as diffusers' WanImageToVideoPipeline is.

The first frame enters twice: its CLIP vision tokens (penultimate hidden states) join the text in cross-attention,
and its VAE latents (the frame followed by zeros, encoded as a clip) with a 4-channel mask marking the known frame
are concatenated to the noisy latents along the channels.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from diffusers import AutoencoderKLWan, WanImageToVideoPipeline
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.transformers.transformer_wan import (
    WanAttention,
    _get_added_kv_projections,
    _get_qkv_projections,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from torch import nn
from transformers import CLIPImageProcessor, CLIPVisionModel, PreTrainedTokenizerBase, UMT5EncoderModel

from mm_data.transforms import normalize_pixels
from mm_models_video.flow_matching import FlowMatching
from mm_models_video.wan2_1.flavors import MASK_CHANNELS
from mm_models_video.wan2_1.mindspeed import vae_tiling
from mm_models_video.wan2_1.model import Carry, WanT2V


def _attend(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    out = dispatch_attention_fn(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False)
    return out.flatten(2, 3).type_as(query)


class ImageTextCrossAttention:
    """A WanAttention processor for I2V cross-attention whose first ``image_tokens`` context tokens are the image's.

    It computes what diffusers' WanAttnProcessor does (text attention plus attention to the image through the added
    k/v projections), but diffusers takes everything before the *last 512* context tokens as the image's, which is
    wrong for any text length but 512; here the split is the image's own token count.
    """

    def __init__(self, image_tokens: int) -> None:
        self.image_tokens = image_tokens

    def __call__(
        self,
        attn: WanAttention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Attention of the tokens to the text and, through add_k_proj / add_v_proj, to the image; summed."""
        if encoder_hidden_states is None or attention_mask is not None or rotary_emb is not None:
            raise ValueError("ImageTextCrossAttention is for Wan's unmasked I2V cross-attention (attn2) only")
        image = encoder_hidden_states[:, : self.image_tokens]
        text = encoder_hidden_states[:, self.image_tokens :]
        query, key, value = _get_qkv_projections(attn, hidden_states, text)
        query, key = attn.norm_q(query), attn.norm_k(key)
        key_img, value_img = _get_added_kv_projections(attn, image)
        key_img = attn.norm_added_k(key_img)
        query, key, value, key_img, value_img = (
            t.unflatten(2, (attn.heads, -1)) for t in (query, key, value, key_img, value_img)
        )
        out = _attend(query, key, value) + _attend(query, key_img, value_img)
        return attn.to_out[1](attn.to_out[0](out))


def use_image_text_cross_attention(predictor: nn.Module, image_tokens: int) -> None:
    """Every block's cross-attention (attn2) split at ``image_tokens`` (see ImageTextCrossAttention)."""
    for block in predictor.blocks:
        block.attn2.set_processor(ImageTextCrossAttention(image_tokens))


class WanI2V(WanT2V):
    """WanT2V + image_encoder (CLIPVisionModel, frozen) + image_processor (CLIPImageProcessor): image-to-video.

    The predictor is a WanTransformer3DModel with ``image_dim`` and ``added_kv_proj_dim`` whose input channels are
    the noisy latents, the 4 mask channels and the first frame's latents.
    """

    def __init__(
        self,
        ae: AutoencoderKLWan,
        text_encoder: UMT5EncoderModel,
        tokenizer: PreTrainedTokenizerBase,
        image_encoder: CLIPVisionModel,
        image_processor: CLIPImageProcessor,
        predictor: nn.Module,
        diffusion: FlowMatching,
        text_len: int,
        image_tokens: int,
        norm_latents: bool = True,
        do_sample: bool = False,
        external: Sequence[str] = (),
        condition_tiling: bool | None = None,
    ) -> None:
        super().__init__(ae, text_encoder, tokenizer, predictor, diffusion, text_len, norm_latents, do_sample, external)
        self.condition_tiling = condition_tiling  # the first frame's encode: tiled, not, or as the clips' (None)
        self.image_encoder = image_encoder.requires_grad_(False).eval()
        self.image_processor = image_processor
        self.image_tokens = image_tokens
        use_image_text_cross_attention(predictor, image_tokens)

    def train(self, mode: bool = True) -> WanI2V:
        """Set the trained parts' mode; the frozen encoders, the image encoder too, always stay in eval mode."""
        super().train(mode)
        if self.image_encoder is not None:
            self.image_encoder.eval()
        return self

    @torch.no_grad()
    def encode_image(self, frames: torch.Tensor) -> torch.Tensor:
        """Frames [B, 3, H, W] (uint8, or float in [-1, 1]) -> float32 CLIP penultimate hidden states [B, tokens, D]."""
        if frames.dtype != torch.uint8:
            frames = ((frames.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
        pixels = self.image_processor(images=frames.cpu(), return_tensors="pt").pixel_values
        encoder = self.image_encoder
        hidden = encoder(pixels.to(encoder.device, encoder.dtype), output_hidden_states=True).hidden_states[-2]
        return hidden.float()

    @torch.no_grad()
    def condition_latents(self, first_frame: torch.Tensor, num_frames: int) -> torch.Tensor:
        """First frames [B, 3, H, W] -> [B, 4 + z, F, H/8, W/8]: the mask of the known frame, then the latents of
        the frame followed by ``num_frames`` - 1 zero frames (WanImageToVideoPipeline.prepare_latents)."""
        first = normalize_pixels(first_frame).float().unsqueeze(2)
        zeros = first.new_zeros(first.shape[0], 3, num_frames - 1, *first.shape[3:])
        with vae_tiling(self.ae, self.condition_tiling):
            latents = self.encode_video(torch.cat([first, zeros], dim=2))
        mask = torch.zeros(latents.shape[0], MASK_CHANNELS, *latents.shape[2:], device=latents.device)
        mask[:, :, 0] = 1
        return torch.cat([mask, latents], dim=1)

    def features(self, batch: dict) -> dict:
        """WanT2V's features, and the first frame's CLIP tokens and condition latents."""
        if "video" not in batch:
            return batch
        first = batch["video"][:, :, 0]
        return {**super().features(batch), "image_embeds": self.encode_image(first),
                "condition": self.condition_latents(first, batch["video"].shape[2])}

    def offloaded(self) -> list[nn.Module]:
        """The text encoder and the image encoder."""
        return [*super().offloaded(), self.image_encoder]

    def embed(
        self,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        video: torch.Tensor | None = None,
        prompt: Sequence[str] | None = None,
        noise: torch.Tensor | None = None,
        timestep_indices: torch.Tensor | None = None,
        noise_seeds: Sequence[int] | torch.Tensor | None = None,
        image_embeds: torch.Tensor | None = None,
        condition: torch.Tensor | None = None,
    ) -> Carry:
        """Encode, noise, concatenate the condition channels to the noisy latents, then embed (image tokens first).

        ``image_embeds`` (CLIP tokens) and ``condition`` (mask + first-frame latents) come as features, or are made
        here from ``video``'s first frame.
        """
        if latents is None:
            latents = self.encode_video(video)
        if image_embeds is None:
            image_embeds = self.encode_image(video[:, :, 0])
        if condition is None:
            condition = self.condition_latents(video[:, :, 0], video.shape[2])
        if prompt_embeds is None:
            prompt_embeds = self.encode_text(prompt)
        noise, timestep_indices = self.diffusion.noise_and_indices(latents, noise, timestep_indices, noise_seeds)
        noised, timesteps = self.diffusion.add_noise(latents, noise, timestep_indices)
        hidden = torch.cat([noised, condition.to(noised.dtype)], dim=1)
        return self.embed_tokens(hidden, timesteps, prompt_embeds, self.diffusion.target(latents, noise), image_embeds)

    def pipeline(self) -> WanImageToVideoPipeline:
        """A diffusers WanImageToVideoPipeline over these very modules, with the Euler scheduler of this diffusion."""
        return self.image_pipeline(self.diffusion.sampling_scheduler())

    def image_pipeline(self, scheduler: SchedulerMixin) -> WanImageToVideoPipeline:
        """A diffusers WanImageToVideoPipeline over these very modules and ``scheduler``."""
        return WanImageToVideoPipeline(
            tokenizer=self.tokenizer,
            text_encoder=self.text_encoder,
            vae=self.ae,
            scheduler=scheduler,
            image_processor=self.image_processor,
            image_encoder=self.image_encoder,
            transformer=self.predictor,
        )
