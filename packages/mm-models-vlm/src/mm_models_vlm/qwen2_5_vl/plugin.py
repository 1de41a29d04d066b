"""The ``qwen2_5_vl`` plugin: finetune Qwen2.5-VL (transformers' model) on mllm_format conversations."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import torch

from mm_core import ParallelPlan, hookimpl
from mm_core.config import Config
from mm_core.runtime import Runtime
from mm_models_vlm.qwen2_5_vl.batch import Batch
from mm_models_vlm.qwen2_5_vl.build import build_model
from mm_models_vlm.qwen2_5_vl.convert import register_converters  # noqa: F401 (mm-convert hook)
from mm_models_vlm.qwen2_5_vl.data import build_train_loader
from mm_models_vlm.qwen2_5_vl.fused_loss import LMHiddenStates, hidden_states, next_token_loss_sum
from mm_models_vlm.qwen2_5_vl.model import apply_freeze
from mm_models_vlm.qwen2_5_vl.pipeline import pipeline_plan
from mm_models_vlm.qwen2_5_vl.schema import defaults
from mm_models_vlm.qwen2_5_vl.tp import tensor_parallel_plan

log = logging.getLogger("mm")

# The decoder projections LLaMA-Factory and ms-swift adapt in Qwen2.5-VL; the vision tower's MLP shares their names.
LORA_TARGETS = tuple(f"language_model.layers.*.{name}" for name in (
    "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
    "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"))

# MindSpeed-MM's module paths (its fsdp2_config.yaml and recompute lists) -> transformers' Qwen2.5-VL.
MINDSPEED_MODULES = {
    "text_decoder": "model.language_model",
    "text_decoder.decoder.layers": "model.language_model.layers",
    "text_decoder.decoder.final_layernorm": "model.language_model.norm",
    "text_decoder.embedding": "model.language_model.embed_tokens",
    "text_decoder.rotary_pos_emb": "model.language_model.rotary_emb",
    "text_decoder.output_layer": "lm_head",
    "image_encoder": "model.visual",
    "image_encoder.encoder": "model.visual",
    "image_encoder.encoder.blocks.layers": "model.visual.blocks",
    "image_encoder.encoder.patch_embed": "model.visual.patch_embed",
    "image_encoder.projector": "model.visual.merger",
}


@hookimpl
def default_config(task: str) -> dict:
    """The model.json / data_3b.json sections and the embedded tiny run's training values."""
    return defaults()


@hookimpl
def model_provider(config: Config, runtime) -> torch.nn.Module:
    """Qwen2.5-VL from ``model.from_pretrained``, a model.json's architecture or the generated tiny model, with the
    configured parts frozen."""
    model = build_model(config, runtime.is_main)
    frozen = apply_freeze(model, config.model)
    if frozen and runtime.is_main:
        log.info("qwen2_5_vl: frozen %s", ", ".join(frozen))
    return model


@hookimpl
def datasets_provider(config: Config, runtime):
    """The tokenized, cached mllm_format dataset as this rank's DataLoader; no validation or test split."""
    return build_train_loader(config, runtime), None, None


@hookimpl
def get_batch(data_iterator: Iterator[Batch], runtime: Runtime) -> Batch:
    """The next micro-batch (a ``PackedBatch`` or a ``PaddedBatch``) with its tensors on the device."""
    return next(data_iterator).to(runtime.device)


@hookimpl
def forward_step(batch: Batch, model: torch.nn.Module, runtime) -> LMHiddenStates:
    """Final hidden states of the batch, with the lm_head that ``loss_func`` projects them with chunk by chunk.

    A packed row gets per-sample positions (and, for flash implementations, its ``cu_seqlens``) so samples do
    not attend to each other.
    """
    return hidden_states(model, {**batch.model_inputs(model), "use_cache": False})


@hookimpl
def loss_func(output: torch.Tensor, batch: Batch, runtime) -> tuple[torch.Tensor, dict]:
    """Next-token cross-entropy averaged over the assistant tokens of the micro-batch (logits made chunk by chunk).

    The counts come from the collate's host-side ``target_index`` and ``num_tokens``: nothing is read back.
    """
    total = next_token_loss_sum(output, batch.labels, batch.target_index)
    targets = batch.target_index.numel()
    return total / max(targets, 1), {"tokens": float(batch.num_tokens), "targets": float(targets)}


@hookimpl
def parallel_plan(model: torch.nn.Module, config: Config) -> ParallelPlan:
    """FSDP2 units: every vision block and every decoder layer (transformers' module names); the PP stages; the
    language model's TP layout (``tp``); LoRA adapts the decoder's attention and MLP projections by default."""
    return ParallelPlan(fsdp_modules=["model.visual.blocks.{*}", "model.language_model.layers.{*}"],
                        pipeline=pipeline_plan(model, config), tp=tensor_parallel_plan(model),
                        lora_targets=LORA_TARGETS, module_aliases=MINDSPEED_MODULES)


@hookimpl
def after_training(config: Config, runtime, checkpoint) -> None:
    """Say where the checkpoint went and how to turn it into a Hugging Face directory."""
    if runtime.is_main and checkpoint is not None:
        print(f"qwen2_5_vl: checkpoint in {checkpoint}\n"
              f"  export to Hugging Face: python -m mm_models_vlm.qwen2_5_vl.export {checkpoint} <out_dir>")
