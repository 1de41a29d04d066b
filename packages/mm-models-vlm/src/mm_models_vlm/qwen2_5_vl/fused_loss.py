"""Next-token cross-entropy through the lm_head in chunks, so the [tokens, vocabulary] logits never exist at once.

Qwen2.5-VL's vocabulary has 151,936 entries: the float32 logits of 8 × 514 tokens take 2.5 GB, and as much
again for their gradient. Here the model runs up to its head only; the loss projects the target positions
(labels other than ``IGNORE_INDEX``) onto the vocabulary ``CHUNK_TOKENS`` rows at a time, and each chunk's
logits are recomputed in backward instead of kept. The result equals cross-entropy over full logits; only
the order of the float additions differs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from mm_models_vlm.qwen2_5_vl.encode import IGNORE_INDEX
from mm_models_vlm.qwen2_5_vl.model import unwrap
from mm_parallel import vocab_parallel_cross_entropy

# Rows projected onto the vocabulary at once: 1024 × 151,936 float32 logits are 0.6 GB.
CHUNK_TOKENS = 1024


class LMHiddenStates(torch.Tensor):
    """The final hidden states ``[B, L, H]`` of a language model, carrying ``head``, which turns them into logits."""

    # Operations on it give plain tensors: only the object forward_step returns carries the head.
    __torch_function__ = torch._C._disabled_torch_function_impl
    head: nn.Module


def hidden_states(model: nn.Module, inputs: dict) -> LMHiddenStates:
    """Run ``model`` (wrappers and engine hooks included) with its ``lm_head`` projecting no position.

    The head's input is kept and the head gets an empty slice of it, so the forward costs no logits. The hook runs
    before any engine's (TP's turns the input into a DTensor), so the kept input is a plain tensor.
    """
    head = unwrap(model).lm_head
    kept: list[torch.Tensor] = []

    def keep_input(module: nn.Module, args: tuple) -> tuple:
        kept.append(args[0])
        return (args[0][..., :0, :], *args[1:])

    handle = head.register_forward_pre_hook(keep_input, prepend=True)
    try:
        model(**inputs)
    finally:
        handle.remove()
    hidden = kept[-1].as_subclass(LMHiddenStates)
    hidden.head = head
    return hidden


def _chunk_loss(head: nn.Module, rows: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    # Under TP the head's logits are split over the vocabulary and stay so.
    return vocab_parallel_cross_entropy(head(rows).float(), targets, reduction="sum")


def target_positions(labels: torch.Tensor) -> torch.Tensor:
    """Flat indices into ``labels`` [B, L] of the tokens whose next label is a target (their prediction is scored).

    The collates compute it on the host, so that the loss selects rows by an index of known size: a boolean
    mask on the device would make the host wait to learn how many rows it selects.
    """
    scored = torch.zeros_like(labels, dtype=torch.bool)
    scored[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    return scored.flatten().nonzero().squeeze(1)


def chunked_cross_entropy(
    hidden: torch.Tensor, head: nn.Module, labels: torch.Tensor, chunk_tokens: int | None = None,
    index: torch.Tensor | None = None,
) -> torch.Tensor:
    """Summed next-token cross-entropy of ``head(hidden)`` against ``labels`` [B, L], ``chunk_tokens`` rows at a time.

    Only the positions of ``index`` (``target_positions(labels)`` unless given) are projected: prompt and image
    tokens cost nothing. ``chunk_tokens`` defaults to ``CHUNK_TOKENS``.
    """
    size = chunk_tokens or CHUNK_TOKENS
    index = target_positions(labels) if index is None else index
    rows = hidden.flatten(0, 1).index_select(0, index)
    targets = labels.flatten().index_select(0, index + 1)
    # With no target at all the single empty chunk still links the loss to the head and the model (zero gradients).
    parts = [
        checkpoint(_chunk_loss, head, r, t, use_reentrant=False)
        for r, t in zip(rows.split(size), targets.split(size))
    ]
    return torch.stack(parts).sum()


def next_token_loss_sum(output: torch.Tensor, labels: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
    """Summed next-token cross-entropy of ``output``: hidden states with their head (chunked) or full logits.

    ``index``: the hidden states' scored positions (``target_positions(labels)``), when already known.
    """
    if isinstance(output, LMHiddenStates):
        return chunked_cross_entropy(output, output.head, labels, index=index)
    logits = output[:, :-1].float()
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"
    )
