"""Packing: one row of several samples gives the logits and loss each sample gets alone; get_batch moves it."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from mm_models_vlm.qwen2_5_vl import plugin
from mm_models_vlm.qwen2_5_vl.batch import collate_padded, vision_inputs
from mm_models_vlm.qwen2_5_vl.packing import collate_packed


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


def test_packing_without_per_sample_positions_would_differ(model, items, processor, rope):
    """The check above has teeth: the same row as one sample, without per-sample positions, mixes the samples."""
    packed_logits, _, _ = _run(model, collate_packed(items, rope))
    row = {key: torch.cat([item[key] for item in items]) for key in ("input_ids", "labels", "mm_token_type_ids")}
    row.update(vision_inputs(items))
    mixed_logits, _, _ = _run(model, collate_padded([row], processor.tokenizer.pad_token_id))
    n = len(items[0]["input_ids"])
    torch.testing.assert_close(mixed_logits[0, :n], packed_logits[0, :n], rtol=1e-4, atol=1e-4)
    assert not torch.allclose(mixed_logits[0, n:], packed_logits[0, n:], rtol=1e-3, atol=1e-3)


def test_packed_row_masks_each_samples_first_label(items, rope):
    batch = collate_packed(items, rope)
    starts = batch.cu_seqlens[:-1]
    assert (batch.labels[0, starts] == -100).all()
    assert batch.vision["image_grid_thw"].shape[0] == 3


@pytest.mark.parametrize("packed", [True, False], ids=["packed", "padded"])
def test_get_batch_puts_every_tensor_on_the_device_and_keeps_host_counts(items, processor, rope, packed):
    batch = collate_packed(items, rope) if packed else collate_padded(items, processor.tokenizer.pad_token_id)
    moved = plugin.get_batch(data_iterator=iter([batch]), runtime=SimpleNamespace(device=torch.device("meta")))
    assert type(moved) is type(batch)
    tensors = {name: value for name, value in vars(moved).items() if isinstance(value, torch.Tensor)}
    tensors.update(moved.vision)
    layout = {"position_ids", "cu_seqlens"} if packed else {"attention_mask"}
    assert tensors.keys() == {"input_ids", "labels", "mm_token_type_ids", "target_index", "pixel_values",
                              "image_grid_thw", *layout}
    assert all(t.is_meta for t in tensors.values())
    assert moved.num_tokens == sum(len(item["input_ids"]) for item in items)
    assert not packed or moved.max_seqlen == max(len(item["input_ids"]) for item in items)
