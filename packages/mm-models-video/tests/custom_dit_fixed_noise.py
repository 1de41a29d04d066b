"""Stacked on custom_dit in tests: each sample's noise and timestep are seeded by its index, so runs split
differently over ranks see the same noise (``--plugin custom_dit --plugin custom_dit_fixed_noise``)."""

from __future__ import annotations

from mm_core import hookimpl


@hookimpl
def forward_step(batch, model, runtime):
    """custom_dit's forward with per-sample noise seeds."""
    keys = ("video", "prompt_ids", "prompt_mask")
    return model(**{key: batch[key] for key in keys}, noise_seeds=batch["index"])
