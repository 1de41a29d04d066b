"""A tiny Qwen2.5-VL Hugging Face directory built locally: BPE tokenizer, processor, random weights."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    PreTrainedTokenizerFast,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2VLImageProcessor,
    Qwen2VLVideoProcessor,
)

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                  "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]

# Qwen2.5-VL-Instruct's chat template (chat_template.json of the Hugging Face release).
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: "
    "{% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

CORPUS = [
    "You are a helpful assistant.",
    "system user assistant",
    "What shape is in the image? Which colour is the shape? Describe the picture.",
    "A red circle. A green square. A blue triangle. A yellow circle. A white square.",
    "There is a small shape on a dark background in the image.",
]

PATCH, MERGE, TEMPORAL = 14, 2, 2
MIN_PIXELS, MAX_PIXELS = 28 * 28, 112 * 112


def tiny_processor() -> Qwen2_5_VLProcessor:
    """A Qwen2.5-VL processor with a byte-level BPE tokenizer trained on a few sentences."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    sizes = {"patch_size": PATCH, "merge_size": MERGE, "temporal_patch_size": TEMPORAL,
             "min_pixels": MIN_PIXELS, "max_pixels": MAX_PIXELS}
    return Qwen2_5_VLProcessor(image_processor=Qwen2VLImageProcessor(**sizes), tokenizer=fast,
                               video_processor=Qwen2VLVideoProcessor(**sizes), chat_template=CHAT_TEMPLATE)


def tiny_config(processor: Qwen2_5_VLProcessor) -> Qwen2_5_VLConfig:
    """2 LLM layers of width 64 and a 2-block vision tower, matching ``processor``'s tokens and patches."""
    tok = processor.tokenizer
    ids = {name: tok.convert_tokens_to_ids(token) for name, token in (
        ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
        ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>"))}
    text = {"vocab_size": len(tok), "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 2048,
            "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]},
            "bos_token_id": tok.convert_tokens_to_ids("<|endoftext|>"), "eos_token_id": tok.eos_token_id,
            "pad_token_id": tok.pad_token_id}
    vision = {"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "out_hidden_size": 64,
              "patch_size": PATCH, "spatial_merge_size": MERGE, "temporal_patch_size": TEMPORAL,
              "window_size": 2 * PATCH * MERGE, "fullatt_block_indexes": [1]}
    return Qwen2_5_VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=True, **ids)


def make_tiny_checkpoint(path: str | Path, seed: int = 0) -> Path:
    """Write a tiny Qwen2.5-VL directory (config, random weights, tokenizer, processor) once; returns it.

    Under torch.distributed only rank 0 writes (transformers' save_pretrained skips the other ranks) and
    every rank waits for it.
    """
    path = Path(path)
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    if not distributed or torch.distributed.get_rank() == 0:
        _write_tiny_checkpoint(path, seed)
    if distributed:
        torch.distributed.barrier()
    return path


def _write_tiny_checkpoint(path: Path, seed: int) -> None:
    if (path / "config.json").is_file():
        return
    processor = tiny_processor()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2_5_VLForConditionalGeneration(tiny_config(processor))
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    processor.save_pretrained(tmp)
    try:
        tmp.rename(path)
    except OSError:  # another process finished first
        shutil.rmtree(tmp)
