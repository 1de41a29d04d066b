"""Qwen2.5-VL finetuning for mm: transformers' model and processor on MindSpeed-MM's mllm_format data."""
