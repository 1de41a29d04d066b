"""``mm_flash_varlen``: transformers attention that runs a packed row sample by sample from its ``cu_seq_lens``.

Given ``cu_seq_lens_q`` / ``cu_seq_lens_k`` (and the longest sample, ``max_length_q`` / ``max_length_k``, host
ints), each sample attends only to itself and no ``[L, L]`` mask exists: on CUDA in bf16 / fp16 one call of torch's
``varlen_attn`` (flash or cuDNN kernels) covers the whole row; elsewhere (the CPU, float32, other accelerators)
transformers' ``sdpa`` runs once per sample, which is exactly what each sample gets alone. Without them (padded
batches, inference) it is transformers' ``sdpa`` with the mask ``sdpa`` would get.

The name contains "flash" so that transformers treats it as a flash implementation: Qwen2.5-VL's vision tower
then passes its ``cu_seqlens`` here in one call per block instead of one call per window, and the text model
takes the varlen arguments instead of building a mask. transformers tries to fetch a hub kernel for any "flash"
name a model is loaded with, so ``use_attention`` switches an already loaded model to it.
"""

from __future__ import annotations

import torch
from torch.nn.attention.varlen import varlen_attn
from transformers import AttentionInterface, PreTrainedModel
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from mm_core.errors import ConfigError

NAME = "mm_flash_varlen"
# The implementations model.attn_implementation may name; the first is the default.
IMPLEMENTATIONS = (NAME, "sdpa", "eager", "flash_attention_2")
# torch's varlen_attn runs aten's flash / cuDNN kernels: CUDA only, half precision only, no dropout.
KERNEL_DEVICES = ("cuda",)
KERNEL_DTYPES = (torch.bfloat16, torch.float16)


def uses_kernel(device_type: str, dtype: torch.dtype, dropout: float = 0.0) -> bool:
    """Whether a packed row on ``device_type`` in ``dtype`` goes to ``varlen_attn`` (else sdpa per sample)."""
    return device_type in KERNEL_DEVICES and dtype in KERNEL_DTYPES and dropout == 0.0


def _max_length(cu_seq_lens: torch.Tensor, given: int | None) -> int:
    # Callers pass host ints; reading the lengths back is the fallback for a caller that does not.
    return given if given is not None else int((cu_seq_lens[1:] - cu_seq_lens[:-1]).max())


def _kernel(module, query, key, value, cu_q, cu_k, max_q, max_k, scaling=None, is_causal=None, **kwargs):
    """The whole row in one ``varlen_attn`` call: ``[1, H, T, D]`` inputs, ``[1, T, H, D]`` output."""
    causal = getattr(module, "is_causal", True) if is_causal is None else is_causal
    q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))
    out = varlen_attn(q, k, v, cu_q, cu_k, _max_length(cu_q, max_q), _max_length(cu_k, max_k), scale=scaling,
                      window_size=(-1, 0) if causal else (-1, -1), enable_gqa=q.shape[1] != k.shape[1])
    return out[None], None


def _per_sample(module, query, key, value, cu_q, cu_k, **kwargs):
    """transformers' sdpa on each sample's slice of the row, outputs concatenated: ``[1, T, H, D]``."""
    bounds_q, bounds_k = cu_q.tolist(), cu_k.tolist()
    outputs = [
        sdpa_attention_forward(module, query[:, :, q0:q1], key[:, :, k0:k1], value[:, :, k0:k1], None, **kwargs)[0]
        for q0, q1, k0, k1 in zip(bounds_q[:-1], bounds_q[1:], bounds_k[:-1], bounds_k[1:])
    ]
    return torch.cat(outputs, dim=1), None


def varlen_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    cu_seq_lens_q: torch.Tensor | None = None,
    cu_seq_lens_k: torch.Tensor | None = None,
    max_length_q: int | None = None,
    max_length_k: int | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """The ``mm_flash_varlen`` attention: per sample of a packed row given ``cu_seq_lens_*``, else ``sdpa``."""
    if cu_seq_lens_q is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    if query.shape[0] != 1:
        raise ValueError(f"{NAME}: a packed row is one sequence, got a batch of {query.shape[0]}")
    if kwargs.get("sliding_window") is not None:
        raise ValueError(f"{NAME} has no sliding-window attention over packed rows; use sdpa")
    cu_seq_lens_k = cu_seq_lens_q if cu_seq_lens_k is None else cu_seq_lens_k
    if uses_kernel(query.device.type, query.dtype, kwargs.get("dropout", 0.0)):
        return _kernel(module, query, key, value, cu_seq_lens_q, cu_seq_lens_k, max_length_q, max_length_k, **kwargs)
    return _per_sample(module, query, key, value, cu_seq_lens_q, cu_seq_lens_k, **kwargs)


AttentionInterface.register(NAME, varlen_attention_forward)
AttentionMaskInterface.register(NAME, sdpa_mask)


def check_implementation(name: str) -> str:
    """``name`` if it is one of ``IMPLEMENTATIONS``, else one ConfigError naming them."""
    if name not in IMPLEMENTATIONS:
        raise ConfigError(f"model.attn_implementation must be one of {', '.join(IMPLEMENTATIONS)}, got {name!r}")
    return name


def load_implementation(name: str) -> str:
    """The implementation to load a model with: ours loads as ``sdpa`` and is switched to by ``use_attention``."""
    return "sdpa" if check_implementation(name) == NAME else name


def use_attention(model: PreTrainedModel, name: str) -> PreTrainedModel:
    """Switch a model loaded with ``load_implementation(name)`` to ``name`` (its config and every sub-config)."""
    if check_implementation(name) == NAME:
        model.config._attn_implementation = NAME
    return model
