"""OpenSoraPlanT2V: the frozen WF-VAE and mT5, the trained sparse DiT and v1.3's DDPM, as one training module."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from transformers import MT5EncoderModel, PreTrainedTokenizerBase

from mm_data.transforms import normalize_pixels
from mm_models_video.frozen import FrozenEncoders
from mm_models_video.opensoraplan1_3 import transformer
from mm_models_video.opensoraplan1_3.diffusion import OpenSoraDiffusion
from mm_models_video.opensoraplan1_3.transformer import OpenSoraT2V
from mm_models_video.opensoraplan1_3.wfvae import WFVAEModel


class Carry(NamedTuple):
    """The transformer's carry (see ``transformer.Carry``) and what the loss needs, between pipeline stages.

    ``loss_mask`` is [B, T, H, W] over the latents (1 kept) or [B, 0] when nothing is padded.
    """

    hidden: torch.Tensor
    prompt: torch.Tensor
    timestep: torch.Tensor
    embedded_timestep: torch.Tensor
    prompt_bias: torch.Tensor
    video_bias: torch.Tensor
    rope_cos: torch.Tensor
    rope_sin: torch.Tensor
    target: torch.Tensor
    weights: torch.Tensor
    loss_mask: torch.Tensor


def run_block(block: torch.nn.Module, carry: Carry | tuple[torch.Tensor, ...]) -> Carry:
    """One transformer block on the carry's tokens; the rest passes on unchanged."""
    carry = Carry(*carry)
    inner = transformer.run_block(block, transformer.Carry(*carry[: len(transformer.Carry._fields)]))
    return carry._replace(hidden=inner.hidden)


class OpenSoraPlanT2V(FrozenEncoders):
    """ae (WFVAEModel) + text_encoder (MT5EncoderModel) + predictor (OpenSoraT2V) + diffusion; the predictor trains.

    ``timestep_stratum`` is (data-parallel rank, size) for ``explicit_uniform`` timesteps; ``text_dropout`` the
    share of captions replaced by the empty one while training (the data section's ``cfg``).
    """

    def __init__(
        self,
        ae: WFVAEModel,
        text_encoder: MT5EncoderModel,
        tokenizer: PreTrainedTokenizerBase,
        predictor: OpenSoraT2V,
        diffusion: OpenSoraDiffusion,
        text_len: int,
        do_sample: bool = True,
        external: Sequence[str] = (),
    ) -> None:
        super().__init__(ae, text_encoder, norm_latents=True, do_sample=do_sample, external=external)
        self.predictor = predictor
        self.tokenizer = tokenizer
        self.diffusion = diffusion
        self.text_len = text_len
        self.timestep_stratum = (0, 1)
        self.text_dropout = 0.0

    @property
    def vae_strides(self) -> tuple[int, int]:
        """The frames and pixels one latent spans: WF-VAE's 4 and 8."""
        return self.ae.strides

    @torch.no_grad()
    def encode_video(
        self, video: torch.Tensor, generators: Sequence[torch.Generator] | None = None
    ) -> torch.Tensor:
        """Pixels [B, 3, 1+4k, H, W] (uint8 or [-1, 1]) -> float32 latents (z - shift) · scale [B, 8, 1+k, H/8, W/8].

        With ``do_sample`` the posterior is sampled, each sample from its generator (the global RNG without them).
        With ``vae_cp_group`` set (``model.ae.vae_cp_size``) the clip's frames are encoded split over that group.
        """
        pixels = normalize_pixels(video).to(self.ae.dtype)
        posterior = (self.ae.encode(pixels) if self.vae_cp_group is None
                     else self.ae.encode_split(pixels, self.vae_cp_group))
        mean, std = posterior.mean.float(), posterior.std.float()
        if self.do_sample:
            if generators is None:
                latents = mean + std * torch.randn_like(mean)
            else:
                noise = [torch.randn(mean.shape[1:], generator=g, device=mean.device) for g in generators]
                latents = mean + std * torch.stack(noise)
        else:
            latents = mean
        shift, scale = self.ae.latent_stats(latents)
        return (latents - shift) * scale

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalized latents -> pixels in [-1, 1], float32 [B, 3, T, H, W]."""
        shift, scale = self.ae.latent_stats(latents)
        return self.ae.decode((latents / scale + shift).to(self.ae.dtype)).float().clamp(-1, 1)

    def tokenize(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and attention mask [B, text_len], padded to the length (as the release's dataset)."""
        tokens = self.tokenizer(
            list(prompts), padding="max_length", max_length=self.text_len, truncation=True,
            add_special_tokens=True, return_attention_mask=True, return_tensors="pt",
        )
        return tokens.input_ids, tokens.attention_mask

    @torch.no_grad()
    def encode_text(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts -> float32 mT5 states [B, text_len, D] and their mask [B, text_len]."""
        ids, mask = (t.to(self.text_encoder.device) for t in self.tokenize(prompts))
        return self.text_encoder(ids, attention_mask=mask).last_hidden_state.float(), mask

    def forward(self, **inputs: object) -> dict[str, torch.Tensor | int]:
        """Noise the clip's latents and predict the target: ``{"pred", "target", "weights", "loss_mask", "tokens"}``.

        The inputs are :meth:`embed`'s; it runs each block through :func:`run_block`, then :meth:`predict`, as
        pipeline stages do.
        """
        carry = self.embed(**inputs)
        for block in self.predictor.transformer_blocks:
            carry = run_block(block, carry)
        return self.predict(carry)

    def drop_captions(self, prompts: Sequence[str], generators: Sequence[torch.Generator] | None) -> list[str]:
        """Each prompt replaced by the empty one with probability ``text_dropout``, drawn from its generator."""
        if not self.text_dropout or generators is None:
            return list(prompts)
        draws = [torch.rand((), generator=g, device=g.device).item() for g in generators]
        return ["" if u < self.text_dropout else p for p, u in zip(prompts, draws)]

    def _generators(self, device: torch.device, noise_seeds: Sequence[int] | None) -> list[torch.Generator] | None:
        return None if noise_seeds is None else [torch.Generator(device).manual_seed(int(s)) for s in noise_seeds]

    def encode_inputs(
        self,
        video: torch.Tensor | None = None,
        prompt: Sequence[str] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        prompt_mask: torch.Tensor | None = None,
        noise_seeds: Sequence[int] | None = None,
        noise: torch.Tensor | None = None,
        timesteps: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """``latents``, ``prompt_embeds``, ``prompt_mask``, ``noise`` and ``timesteps``: those given, the others
        encoded from ``video`` / ``prompt`` or drawn, in this order from each sample's generator (its seed in
        ``noise_seeds``, else the global RNG): the VAE sample, the caption dropout, the timestep and noise."""
        device = latents.device if latents is not None else video.device
        generators = self._generators(device, noise_seeds)
        if latents is None:
            latents = self.encode_video(video, generators)
        if prompt_embeds is None:
            prompt_embeds, prompt_mask = self.encode_text(self.drop_captions(prompt, generators) if self.training
                                                          else list(prompt))
        if noise is None or timesteps is None:
            if generators is None:
                generators = [torch.Generator(device).manual_seed(int(s))
                              for s in torch.randint(0, 2**62, (latents.shape[0],)).tolist()]
            drawn_noise, drawn_t = self.diffusion.draw(latents, generators, *self.timestep_stratum)
            noise = drawn_noise if noise is None else noise
            timesteps = drawn_t if timesteps is None else timesteps
        return {"latents": latents, "prompt_embeds": prompt_embeds, "prompt_mask": prompt_mask, "noise": noise,
                "timesteps": timesteps.to(device)}

    def features(self, batch: dict) -> dict:
        """A raw batch with :meth:`encode_inputs` (latents, caption states, noise, timesteps) in place of its
        ``video`` and ``prompt``: what the forward trains on, as the encoder engines serve it (a feature batch as
        it is)."""
        if "video" not in batch:
            return batch
        out = {key: value for key, value in batch.items() if key not in ("video", "prompt")}
        out.update(self.encode_inputs(batch["video"], batch["prompt"], noise_seeds=batch.get("noise_seeds")))
        return out

    def offloaded(self) -> list[torch.nn.Module]:
        """The encoders interleaved offload keeps on the CPU between its windows: mT5."""
        return [self.text_encoder]

    def embed(
        self,
        video: torch.Tensor | None = None,
        prompt: Sequence[str] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        prompt_mask: torch.Tensor | None = None,
        noise_seeds: Sequence[int] | None = None,
        noise: torch.Tensor | None = None,
        timesteps: torch.Tensor | None = None,
        video_mask: torch.Tensor | None = None,
        conditions: torch.Tensor | None = None,
    ) -> Carry:
        """Everything before the blocks: encode (or take features), noise, and the predictor's embeddings.

        Give ``video`` and ``prompt``, or ``latents`` with ``prompt_embeds`` and ``prompt_mask``. Each sample's VAE
        sample, caption dropout, timestep and noise come from its seed in ``noise_seeds``; ``noise`` and
        ``timesteps`` given override them (see :meth:`encode_inputs`). ``video_mask`` [B, T, H, W] marks the
        latents that are not padding; ``conditions`` (I2V) are concatenated to the noised latents along the
        channels.
        """
        inputs = self.encode_inputs(video, prompt, latents, prompt_embeds, prompt_mask, noise_seeds, noise, timesteps)
        latents, noise, timesteps = inputs["latents"], inputs["noise"], inputs["timesteps"]
        noised = self.diffusion.add_noise(latents, noise, timesteps)
        if conditions is not None:
            noised = torch.cat([noised, conditions.to(noised.dtype)], dim=1)
        inner = self.predictor.embed(noised, timesteps, inputs["prompt_embeds"], inputs["prompt_mask"], video_mask)
        target = self.diffusion.target(latents, noise, timesteps)
        weights = self.diffusion.loss_weights(timesteps)
        loss_mask = latents.new_zeros(latents.shape[0], 0) if video_mask is None else video_mask.float()
        return Carry(*inner, target, weights, loss_mask)

    def predict(self, carry: Carry) -> dict[str, torch.Tensor | int]:
        """Everything after the blocks: the predictor's output and the loss's inputs; ``tokens`` counts patches."""
        grid = self.predictor.grid(carry.target)
        pred = self.predictor.unpatchify_output(carry.hidden, carry.embedded_timestep, grid)
        tokens = carry.target.shape[0] * grid[0] * grid[1] * grid[2]
        return {"pred": pred, "target": carry.target, "weights": carry.weights, "loss_mask": carry.loss_mask,
                "tokens": tokens}
