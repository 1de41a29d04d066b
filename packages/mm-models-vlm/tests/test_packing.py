"""Packing: one row of several samples gives the logits and loss each sample gets alone."""

from __future__ import annotations

import pytest
import torch

from mm_models_vlm.qwen2_5_vl import plugin
from mm_models_vlm.qwen2_5_vl.dataset import collate_packed, collate_padded


def _run(model, batch):
    """Logits (the head applied to forward_step's hidden states), loss and metrics of ``batch``."""
    with torch.no_grad():
        hidden = plugin.forward_step(batch=batch, model=model, runtime=None)
        loss, metrics = plugin.loss_func(output=hidden, batch=batch, runtime=None)
        logits = hidden.head(hidden.as_subclass(torch.Tensor))
    return logits, loss, metrics


def test_packed_logits_and_loss_equal_unpacked(model, items, processor, rope):
    packed_logits, packed_loss, metrics = _run(model, collate_packed(items, rope))
    padded_logits, padded_loss, padded_metrics = _run(model, collate_padded(items, processor.tokenizer.pad_token_id))
    assert packed_loss == pytest.approx(padded_loss.item(), rel=1e-5)
    assert metrics["targets"] == padded_metrics["targets"]
    start = 0
    for row, item in enumerate(items):
        n = len(item["input_ids"])
        alone, _, _ = _run(model, collate_padded([item], processor.tokenizer.pad_token_id))
        torch.testing.assert_close(packed_logits[0, start : start + n], alone[0], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(padded_logits[row, :n], alone[0], rtol=1e-4, atol=1e-4)
        start += n


def test_packing_without_per_sample_positions_would_differ(model, items, rope):
    """The check above has teeth: one row without per-sample positions mixes the samples."""
    batch = collate_packed(items, rope)
    packed_logits, _, _ = _run(model, batch)
    del batch["cu_seqlens"]
    mixed_logits, _, _ = _run(model, batch)
    n = len(items[0]["input_ids"])
    torch.testing.assert_close(mixed_logits[0, :n], packed_logits[0, :n], rtol=1e-4, atol=1e-4)
    assert not torch.allclose(mixed_logits[0, n:], packed_logits[0, n:], rtol=1e-3, atol=1e-3)


def test_packed_row_masks_each_samples_first_label(items, rope):
    batch = collate_packed(items, rope)
    starts = batch["cu_seqlens"][:-1]
    assert (batch["labels"][0, starts] == -100).all()
    assert batch["image_grid_thw"].shape[0] == 3
