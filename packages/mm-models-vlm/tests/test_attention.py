"""mm_flash_varlen (the default attention): equals sdpa on packed and padded batches, forward and backward, and in
training; its dispatch; and a packed text step that reads nothing back from the device."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention.varlen import varlen_attn

from mm_core.errors import ConfigError
from mm_core.testing import needs_cuda
from mm_models_vlm.qwen2_5_vl import attention, plugin
from mm_models_vlm.qwen2_5_vl.batch import collate_padded
from mm_models_vlm.qwen2_5_vl.encode import IGNORE_INDEX
from mm_models_vlm.qwen2_5_vl.model import load_model
from mm_models_vlm.qwen2_5_vl.packing import RopeIndex, collate_packed

OVERRIDES = ["training.train_iters=3", "training.save_interval=0",
             "data.dataset_param.basic_parameters.preprocessing_num_workers=1"]


@pytest.fixture
def sdpa_model(tiny_dir):
    """The tiny model (the same weights as ``model``) with transformers' sdpa."""
    return load_model(tiny_dir, "sdpa").eval()


def _text_items(lengths: list[int]) -> list[dict]:
    """Text-only samples of ``lengths`` tokens, the first two of each a prompt."""
    generator = torch.Generator().manual_seed(0)
    items = []
    for length in lengths:
        ids = torch.randint(20, 300, (length,), generator=generator)
        labels = ids.clone()
        labels[:2] = IGNORE_INDEX
        items.append({"input_ids": ids, "labels": labels, "mm_token_type_ids": torch.zeros_like(ids)})
    return items


def _step(model, batch):
    """Logits, loss and every parameter's gradient of forward_step + loss_func on ``batch``."""
    model.zero_grad(set_to_none=True)
    hidden = plugin.forward_step(batch=batch, model=model, runtime=None)
    loss, _ = plugin.loss_func(output=hidden, batch=batch, runtime=None)
    loss.backward()
    logits = hidden.head(hidden.as_subclass(torch.Tensor)).detach()
    return logits, loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


def test_the_default_is_mm_flash_varlen_in_the_text_model_and_the_vision_tower(model):
    assert {m.config._attn_implementation for m in model.modules() if hasattr(m, "config")} == {attention.NAME}


def test_packed_logits_loss_and_gradients_equal_sdpa(model, sdpa_model, items, rope):
    """Images included: the vision tower takes cu_seqlens (one call per block), sdpa loops over the windows."""
    batch = collate_packed(items, rope)
    logits, loss, grads = _step(model, batch)
    expected_logits, expected_loss, expected_grads = _step(sdpa_model, batch)
    torch.testing.assert_close(logits, expected_logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(loss, expected_loss, rtol=1e-6, atol=1e-6)
    assert grads.keys() == expected_grads.keys() and any(n.startswith("model.visual.blocks") for n in grads)
    for name, grad in expected_grads.items():
        torch.testing.assert_close(grads[name], grad, rtol=1e-5, atol=1e-6, msg=name)


def test_a_padded_batch_is_exactly_sdpa(model, sdpa_model, items, processor):
    """No cu_seq_lens in the text model: sdpa with the padding mask, bit for bit."""
    batch = collate_padded(items, processor.tokenizer.pad_token_id)
    logits, loss, grads = _step(model, batch)
    expected_logits, expected_loss, expected_grads = _step(sdpa_model, batch)
    assert torch.equal(logits, expected_logits) and torch.equal(loss, expected_loss)
    assert all(torch.equal(grads[name], grad) for name, grad in expected_grads.items())


def test_training_losses_equal_sdpa(mm_train, tmp_path):
    varlen = mm_train(["qwen2_5_vl"], *OVERRIDES, output_dir=tmp_path / "varlen").losses
    sdpa = mm_train(["qwen2_5_vl"], *OVERRIDES, "model.attn_implementation=sdpa", output_dir=tmp_path / "sdpa").losses
    assert len(varlen) == 3 and varlen == pytest.approx(sdpa, rel=1e-5)


@pytest.mark.parametrize(("device", "dtype", "dropout", "kernel"), [
    ("cuda", torch.bfloat16, 0.0, True),
    ("cuda", torch.float16, 0.0, True),
    ("cuda", torch.float32, 0.0, False),
    ("cuda", torch.bfloat16, 0.1, False),
    ("cpu", torch.bfloat16, 0.0, False),
    ("npu", torch.bfloat16, 0.0, False),
])
def test_which_rows_go_to_varlen_attn(device, dtype, dropout, kernel):
    assert attention.uses_kernel(device, dtype, dropout) is kernel


def _reference_varlen_attn(calls: list[dict]):
    """torch's varlen_attn as documented ([T, H, D] rows, window (-1, 0) causal), by SDPA per sequence."""

    def varlen_attn(q, k, v, cu_q, cu_k, max_q, max_k, *, scale=None, window_size=(-1, -1), enable_gqa=False):
        calls.append({"max": (max_q, max_k), "window": window_size, "gqa": enable_gqa, "cu": cu_q.dtype})
        bounds = cu_q.tolist()
        return torch.cat([
            F.scaled_dot_product_attention(*(t[a:b].transpose(0, 1) for t in (q, k, v)), scale=scale,
                                           is_causal=window_size == (-1, 0), enable_gqa=enable_gqa).transpose(0, 1)
            for a, b in zip(bounds[:-1], bounds[1:])])

    return varlen_attn


def test_the_kernel_branch_passes_varlen_attn_the_row_as_documented(model, sdpa_model, items, rope, monkeypatch):
    """With the kernel allowed on the CPU in float32 and varlen_attn's documented semantics in its place, the
    packed row gives sdpa's logits: the layout, causal window, GQA flag and host max lengths are right."""
    calls: list[dict] = []
    monkeypatch.setattr(attention, "KERNEL_DEVICES", ("cpu",))
    monkeypatch.setattr(attention, "KERNEL_DTYPES", (torch.float32,))
    monkeypatch.setattr(attention, "varlen_attn", _reference_varlen_attn(calls))
    batch = collate_packed(items, rope)
    logits, _, _ = _step(model, batch)
    expected, _, _ = _step(sdpa_model, batch)
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)
    text = [c for c in calls if c["window"] == (-1, 0)]
    vision = [c for c in calls if c["window"] == (-1, -1)]
    assert len(text) == len(model.model.language_model.layers) and len(vision) == len(model.model.visual.blocks)
    assert all(c["gqa"] and c["max"] == (batch.max_seqlen,) * 2 for c in text)
    assert not any(c["gqa"] for c in vision) and {c["cu"] for c in calls} == {torch.int32}


@pytest.mark.parametrize("implementation", [attention.NAME, "sdpa"])
def test_a_packed_text_step_reads_nothing_back_only_with_varlen(tiny_dir, implementation, monkeypatch):
    """On the meta device every read of tensor data fails: the packed text step (forward, chunked loss, backward)
    through varlen_attn runs there, so on CUDA it has no host syncs; sdpa's block mask needs the data."""
    monkeypatch.setattr(attention, "KERNEL_DEVICES", ("meta",))
    model = load_model(tiny_dir, implementation).to(torch.bfloat16)
    batch = collate_packed(_text_items([7, 12, 5]), RopeIndex(model.config))
    model, batch = model.to("meta"), batch.to(torch.device("meta"))

    def step():
        output = plugin.forward_step(batch=batch, model=model, runtime=None)
        loss, metrics = plugin.loss_func(output=output, batch=batch, runtime=None)
        loss.backward()
        return metrics

    if implementation == "sdpa":
        with pytest.raises(RuntimeError, match="cannot be called on meta tensors"):
            step()
    else:
        assert step() == {"tokens": 24.0, "targets": 18.0}
        assert model.lm_head.weight.grad is not None


def test_an_unknown_attn_implementation_is_one_config_error(tiny_dir):
    with pytest.raises(ConfigError, match=r"model.attn_implementation must be one of mm_flash_varlen, sdpa, eager, "
                                          r"flash_attention_2, got 'flash'"):
        load_model(tiny_dir, "flash")


@needs_cuda
def test_on_cuda_in_bf16_the_kernel_runs_and_matches_sdpa(model, sdpa_model, items, rope, monkeypatch):
    """The real varlen_attn (flash for text layers, flash or cuDNN for vision blocks) against sdpa, both in bf16."""
    calls = []

    def counted(*args, **kwargs):
        calls.append(kwargs.get("window_size"))
        return varlen_attn(*args, **kwargs)

    monkeypatch.setattr(attention, "varlen_attn", counted)
    cuda = torch.device("cuda")
    batch = collate_packed(items, rope).to(cuda)
    logits, loss, grads = _step(model.to(cuda, torch.bfloat16), batch)
    expected_logits, expected_loss, expected_grads = _step(sdpa_model.to(cuda, torch.bfloat16), batch)
    assert len(calls) == len(model.model.language_model.layers) + len(model.model.visual.blocks)
    torch.testing.assert_close(loss.float(), expected_loss.float(), rtol=2e-2, atol=2e-2)
    assert (logits.float() - expected_logits.float()).abs().max() <= 0.05 * expected_logits.float().abs().max()
    for name, grad in expected_grads.items():
        assert torch.isfinite(grads[name]).all(), name
        scale = grad.float().abs().max().clamp_min(1e-3)
        assert (grads[name].float() - grad.float()).abs().max() <= 0.1 * scale, name
