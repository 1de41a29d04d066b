"""Wan2.1 text-to-video: the ``wan2_1`` plugin (diffusers' Wan VAE and transformer, transformers' UMT5)."""
