"""The ``custom_dit`` plugin: the seeds' new-model guide (a DiT built from diffusers' Wan blocks) as an mm plugin."""
