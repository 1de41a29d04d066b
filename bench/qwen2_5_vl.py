"""Qwen2.5-VL training step: a plain transformers loop against mm's qwen2_5_vl plugin, same samples, random weights.

    python bench/qwen2_5_vl.py                  # Qwen2.5-VL-3B, 8 samples of 257 to 771 tokens (514 on average)
    python bench/qwen2_5_vl.py --tiny --device cpu   # the plugin's tiny model: checks the script in seconds

The samples are text conversations of varied length, the first 40% of each a prompt (no loss on it),
the same for both loops:

- plain: ``Qwen2_5_VLForConditionalGeneration`` in bf16 with ``activation_checkpointing_enable()`` (gradient
  checkpointing of every layer), the samples padded to the longest, transformers' own loss over full logits,
  torch AdamW;
- mm: ``mm_core``'s Trainer running the qwen2_5_vl plugin's forward_step and loss_func on the samples
  packed into one row (no padding; attention per sample by ``cu_seqlens``, the plugin's default
  ``mm_flash_varlen``: torch's varlen_attn on CUDA; chunked lm_head + cross-entropy; no host syncs in the
  plugin's step), with the engines of ``MM_OPTIONS``
  (recompute of every decoder layer, selective by default; ``torch.compile`` of each layer on an accelerator
  (``--compile``); bf16 autocast over float32 weights, fused
  AdamW on accelerators, gradient clipping). The vision tower is built but these samples do not use it.
"""

from __future__ import annotations

import sys

import common
import torch
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

from mm_core import hookimpl
from mm_core.config import Config
from mm_core.runtime import Runtime
from mm_models_vlm.qwen2_5_vl.attention import load_implementation, use_attention
from mm_models_vlm.qwen2_5_vl.batch import collate_padded
from mm_models_vlm.qwen2_5_vl.encode import IGNORE_INDEX
from mm_models_vlm.qwen2_5_vl.packing import RopeIndex, collate_packed
from mm_models_vlm.qwen2_5_vl.schema import MODEL
from mm_models_vlm.qwen2_5_vl.tiny import tiny_config, tiny_processor

WORKLOAD = "qwen2_5_vl"
SAMPLES, MEAN_TOKENS, PROMPT_SHARE = 8, 514, 0.4
TINY_SAMPLES, TINY_MEAN_TOKENS = 4, 24

# Qwen2.5-VL-3B-Instruct's config.json.
QWEN2_5_VL_3B = {
    "text_config": {
        "vocab_size": 151936, "hidden_size": 2048, "intermediate_size": 11008, "num_hidden_layers": 36,
        "num_attention_heads": 16, "num_key_value_heads": 2, "max_position_embeddings": 128000,
        "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
        "bos_token_id": 151643, "eos_token_id": 151645,
    },
    "vision_config": {
        "depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16, "out_hidden_size": 2048,
        "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 112,
        "fullatt_block_indexes": [7, 15, 23, 31], "tokens_per_second": 2,
    },
    "image_token_id": 151655, "video_token_id": 151656, "vision_start_token_id": 151652,
    "vision_end_token_id": 151653, "tie_word_embeddings": True,
}

# The engine options of the mm run (a run config's dotted overrides).
MM_OPTIONS = [
    "parallel.fsdp2.recompute_modules=['model.language_model.layers.{*}']",
    "training.bf16=true",
]


def model_config(tiny: bool) -> Qwen2_5_VLConfig:
    """The 3B architecture, or the plugin's tiny one."""
    return tiny_config(tiny_processor()) if tiny else Qwen2_5_VLConfig(**QWEN2_5_VL_3B)


def samples(count: int, mean: int, vocab: int) -> list[dict]:
    """``count`` text samples of mean ± mean/2 tokens (random ids clear of the special tokens), prompts masked."""
    generator = torch.Generator().manual_seed(0)
    lengths = torch.randint(mean // 2, mean + mean // 2 + 1, (count,), generator=generator).tolist()
    items = []
    for length in lengths:
        ids = torch.randint(16, min(vocab, 151_000), (length,), generator=generator)
        labels = ids.clone()
        labels[: int(length * PROMPT_SHARE)] = IGNORE_INDEX
        items.append({"input_ids": ids, "labels": labels, "mm_token_type_ids": torch.zeros_like(ids)})
    return items


def model_flops(config: Qwen2_5_VLConfig, lengths: list[int]) -> float:
    """Forward + backward FLOPs of the language model on samples of ``lengths`` (3 × forward, no recompute).

    6 per token per weight of the decoder layers, final norm and lm_head (the embedding lookup costs none),
    plus attention: 12 × layers × hidden × Σ length² (QKᵀ and AV, the full square as is usual for MFU).
    """
    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration(config)
    text = model.model.language_model
    dense = sum(p.numel() for m in (text.layers, text.norm, model.lm_head) for p in m.parameters())
    text_config = config.text_config
    attention = 12 * text_config.num_hidden_layers * text_config.hidden_size * sum(n * n for n in lengths)
    return 6.0 * dense * sum(lengths) + attention


def plain_loop(config: Qwen2_5_VLConfig, items: list[dict], device: torch.device):
    """The step a transformers user writes: bf16 weights, gradient checkpointing, padded batch, AdamW."""
    torch.manual_seed(0)
    with device:
        model = Qwen2_5_VLForConditionalGeneration(config).to(torch.bfloat16)
    model.activation_checkpointing_enable()
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    padded = collate_padded(items, pad_token_id=0)
    batch = {k: getattr(padded, k).to(device) for k in ("input_ids", "attention_mask", "mm_token_type_ids", "labels")}

    def step() -> None:
        model(**batch, use_cache=False).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


@hookimpl
def model_provider(config: Config, runtime: Runtime) -> Qwen2_5_VLForConditionalGeneration:
    """Random float32 weights of the benchmarked architecture, built on the device, with the plugin's attention."""
    name = config.model.attn_implementation
    with runtime.device:
        model = Qwen2_5_VLForConditionalGeneration._from_config(
            model_config(config.model.flavor == "tiny"), attn_implementation=load_implementation(name))
    return use_attention(model, name)


@hookimpl
def datasets_provider(config: Config, runtime: Runtime) -> tuple:
    """The bench samples packed into one row (the same each step)."""
    tiny = config.model.flavor == "tiny"
    items = samples(TINY_SAMPLES if tiny else SAMPLES, TINY_MEAN_TOKENS if tiny else MEAN_TOKENS,
                    model_config(tiny).text_config.vocab_size)
    return [collate_packed(items, RopeIndex(model_config(tiny)))], None, None


def main(argv: list[str] | None = None) -> list[dict]:
    """Time the configurations the arguments ask for and report them."""
    args = common.parser(__doc__.splitlines()[0]).parse_args(argv)
    device = common.device_of(args.device)
    config = model_config(args.tiny)
    count, mean = (TINY_SAMPLES, TINY_MEAN_TOKENS) if args.tiny else (SAMPLES, MEAN_TOKENS)
    items = samples(count, mean, config.text_config.vocab_size)
    lengths = [len(item["input_ids"]) for item in items]
    tokens = sum(lengths)
    flops = model_flops(config, lengths)
    shape = {"model": "tiny" if args.tiny else "3b", "batch": count, "lengths": lengths, "tokens": tokens,
             "padded_tokens": count * max(lengths)}
    measured = []
    if args.impl in ("both", "plain"):
        common.release(device)
        step = plain_loop(config, items, device)
        times = common.time_steps(step, device, args.warmup, args.steps)
        options = {"weights": "bf16", "recompute": "transformers gradient checkpointing (full)", "batch": "padded",
                   "optimizer": "AdamW"}
        measured.append(common.measure("plain", times, tokens, flops, device, options))
        del step
    if args.impl in ("both", "mm"):
        common.release(device)
        flavor = [f"model.flavor={'tiny' if args.tiny else '3b'}"]
        overrides = [*MM_OPTIONS, *common.compile_options(args.compile, device)]
        times = common.trainer_step_times(["qwen2_5_vl", sys.modules[__name__]], [*flavor, *overrides], device,
                                          args.warmup, args.steps)
        attention = {"attn_implementation": MODEL["attn_implementation"]}  # the plugin's default
        measured.append(common.measure("mm", times, tokens, flops, device, {"overrides": overrides, **attention}))
    return common.report(WORKLOAD, measured, device, shape, args)


if __name__ == "__main__":
    main()
