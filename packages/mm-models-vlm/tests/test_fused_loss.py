"""The chunked lm_head + cross-entropy gives the loss and gradients of cross-entropy over full logits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mm_models_vlm.qwen2_5_vl import fused_loss, plugin
from mm_models_vlm.qwen2_5_vl.batch import collate_padded
from mm_models_vlm.qwen2_5_vl.encode import IGNORE_INDEX
from mm_models_vlm.qwen2_5_vl.packing import collate_packed


def _plain_loss(model, batch):
    """The reference: full logits from transformers' forward, cross-entropy over every position."""
    logits = model(**batch.model_inputs(model), use_cache=False).logits[:, :-1].float()
    labels = batch.labels[:, 1:]
    total = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE_INDEX,
                            reduction="sum")
    return total / (labels != IGNORE_INDEX).sum()


def _loss_and_grads(model, loss_fn):
    model.zero_grad(set_to_none=True)
    loss = loss_fn()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("packed", [True, False], ids=["packed", "padded"])
def test_loss_and_gradients_equal_full_logits(model, items, processor, rope, packed):
    batch = collate_packed(items, rope) if packed else collate_padded(items, processor.tokenizer.pad_token_id)
    model.train()
    expected, expected_grads = _loss_and_grads(model, lambda: _plain_loss(model, batch))

    def fused():
        output = plugin.forward_step(batch=batch, model=model, runtime=None)
        return plugin.loss_func(output=output, batch=batch, runtime=None)[0]

    got, grads = _loss_and_grads(model, fused)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    assert grads.keys() == expected_grads.keys()
    assert "lm_head.weight" in grads or "model.language_model.embed_tokens.weight" in grads
    for name, grad in expected_grads.items():
        torch.testing.assert_close(grads[name], grad, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("chunk", [1, 5, 10_000])
def test_chunk_size_does_not_change_the_loss(chunk):
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50, bias=False)
    hidden = torch.randn(2, 9, 16, requires_grad=True)
    labels = torch.randint(0, 50, (2, 9))
    labels[0, :4] = IGNORE_INDEX
    logits = head(hidden)[:, :-1]
    expected = F.cross_entropy(logits.reshape(-1, 50), labels[:, 1:].reshape(-1), ignore_index=IGNORE_INDEX,
                               reduction="sum")
    expected_grads = torch.autograd.grad(expected, [hidden, head.weight])
    got = fused_loss.chunked_cross_entropy(hidden, head, labels, chunk_tokens=chunk)
    grads = torch.autograd.grad(got, [hidden, head.weight])
    torch.testing.assert_close(got, expected)
    for g, e in zip(grads, expected_grads):
        torch.testing.assert_close(g, e)


def test_logits_are_made_one_chunk_at_a_time(model, items, rope, monkeypatch):
    """The forward projects no position; the loss never projects more than CHUNK_TOKENS rows at once."""
    monkeypatch.setattr(fused_loss, "CHUNK_TOKENS", 8)
    rows = []
    model.lm_head.register_forward_hook(lambda module, args, out: rows.append(out.shape[:-1].numel()))
    batch = collate_packed(items, rope)
    output = plugin.forward_step(batch=batch, model=model, runtime=None)
    assert rows == [0]
    loss, metrics = plugin.loss_func(output=output, batch=batch, runtime=None)
    loss.backward()
    # Each chunk is projected twice: in the loss's forward and again in backward.
    assert max(rows) == 8 and sum(rows) == 2 * metrics["targets"] > 16


def test_a_batch_without_targets_gives_zero_loss_and_zero_gradients(model, items, rope):
    item = {**items[0], "labels": torch.full_like(items[0]["labels"], IGNORE_INDEX)}
    batch = collate_packed([item], rope)
    output = plugin.forward_step(batch=batch, model=model, runtime=None)
    loss, metrics = plugin.loss_func(output=output, batch=batch, runtime=None)
    loss.backward()
    assert loss.item() == 0.0 and metrics["targets"] == 0.0
    assert all(p.grad is None or not p.grad.any() for p in model.parameters())


def test_a_forward_step_returning_logits_gets_the_same_loss(model, items, rope):
    """A stacked plugin whose forward_step returns transformers' logits still gets the right loss."""
    batch = collate_packed(items, rope)
    with torch.no_grad():
        output = plugin.forward_step(batch=batch, model=model, runtime=None)
        fused, _ = plugin.loss_func(output=output, batch=batch, runtime=None)
        logits = output.head(output)
        plain, _ = plugin.loss_func(output=logits, batch=batch, runtime=None)
    torch.testing.assert_close(fused, plain, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(plain, _plain_loss(model, batch), rtol=1e-6, atol=1e-6)
