"""step_llm: Step-Video's LLM text encoder (a causal decoder with ALiBi, grouped queries and SwiGLU) on SDPA.

The release runs it through a closed CUDA kernel; this is the same network with its state-dict names
(``tok_embeddings.word_embeddings``, ``transformer.layers.{i}.attention.wqkv`` ...) so ``from_pretrained`` loads
the released ``step_llm`` folder. The ALiBi bias is -sqrt(distance) × the head's slope, as MindSpeed-MM writes
the kernel's. The output is the last layer's hidden states (no final norm), [B, S, hidden_size].
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel

# The release's framing: [bos, tokens..., eos, pad...] with pad = eos.
BOS_ID, EOS_ID, PAD_ID = 1, 2, 2


class StepLLMConfig(PretrainedConfig):
    """The keys of the released ``step_llm/config.json`` that the network uses."""

    model_type = "step_llm"

    def __init__(
        self,
        hidden_size: int = 6144,
        num_attention_heads: int = 48,
        num_attention_groups: int = 4,
        ffn_hidden_size: int = 16384,
        num_layers: int = 48,
        layernorm_epsilon: float = 1e-5,
        padded_vocab_size: int = 65536,
        **kwargs,
    ) -> None:
        self.hidden_size = hidden_size
        self.num_attention_heads = num_attention_heads
        self.num_attention_groups = num_attention_groups
        self.ffn_hidden_size = ffn_hidden_size
        self.num_layers = num_layers
        self.layernorm_epsilon = layernorm_epsilon
        self.padded_vocab_size = padded_vocab_size
        super().__init__(**kwargs)


def alibi_slopes(heads: int) -> torch.Tensor:
    """ALiBi's per-head slopes (geometric for the largest power of two, interleaved for the rest)."""
    n = 2 ** math.floor(math.log2(heads))
    slopes = torch.pow(2.0 ** (-8.0 / n), torch.arange(1, n + 1, dtype=torch.float32))
    if n < heads:
        extra = torch.pow(2.0 ** (-4.0 / n), torch.arange(1, 1 + 2 * (heads - n), 2, dtype=torch.float32))
        slopes = torch.cat([slopes, extra])
    return slopes


def alibi_bias(heads: int, length: int, device: torch.device) -> torch.Tensor:
    """The additive causal attention bias [heads, S, S]: -sqrt(i - j) × slope for j ≤ i, -inf above."""
    rows = torch.arange(length, device=device)
    distance = (rows[:, None] - rows[None, :]).float()
    bias = -distance.clamp(min=0).sqrt()[None] * alibi_slopes(heads).to(device)[:, None, None]
    return bias.masked_fill(distance[None] < 0, float("-inf"))


class RMSNorm(nn.Module):
    """RMSNorm computed in float32 (the release's)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x / rms(x) × weight."""
        x32 = x.float()
        return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


class MultiQueryAttention(nn.Module):
    """Causal ALiBi attention with grouped keys and values: ``wqkv`` holds all queries, then k, v per group."""

    def __init__(self, config: StepLLMConfig) -> None:
        super().__init__()
        self.heads, self.groups = config.num_attention_heads, config.num_attention_groups
        self.head_dim = config.hidden_size // self.heads
        self.wqkv = nn.Linear(config.hidden_size, config.hidden_size + self.head_dim * 2 * self.groups, bias=False)
        self.wo = nn.Linear(config.hidden_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """x [B, S, D] -> [B, S, D] under the [heads, S, S] bias."""
        q, kv = self.wqkv(x).split([x.shape[-1], self.head_dim * 2 * self.groups], dim=-1)
        q = q.unflatten(-1, (self.heads, self.head_dim)).transpose(1, 2)
        k, v = kv.unflatten(-1, (self.groups, 2 * self.head_dim)).transpose(1, 2).chunk(2, dim=-1)
        k, v = (t.repeat_interleave(self.heads // self.groups, dim=1) for t in (k, v))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype))
        return self.wo(out.transpose(1, 2).flatten(2))


class FeedForward(nn.Module):
    """SwiGLU: ``w1`` gives the gate and the value (ffn_hidden_size rounded up to 256 each), ``w2`` projects back."""

    def __init__(self, dim: int, hidden: int, multiple_of: int = 256) -> None:
        super().__init__()
        hidden = multiple_of * ((hidden + multiple_of - 1) // multiple_of)
        self.w1 = nn.Linear(dim, 2 * hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """SiLU(gate) × value, projected."""
        gate, value = self.w1(x).chunk(2, dim=-1)
        return self.w2(F.silu(gate) * value)


class TransformerBlock(nn.Module):
    """Pre-norm attention and feed-forward, each added to the residual."""

    def __init__(self, config: StepLLMConfig) -> None:
        super().__init__()
        self.attention = MultiQueryAttention(config)
        self.feed_forward = FeedForward(config.hidden_size, config.ffn_hidden_size)
        self.attention_norm = RMSNorm(config.hidden_size, config.layernorm_epsilon)
        self.ffn_norm = RMSNorm(config.hidden_size, config.layernorm_epsilon)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """[B, S, D] -> [B, S, D]."""
        h = x + self.attention(self.attention_norm(x), bias)
        return h + self.feed_forward(self.ffn_norm(h))


class Embedding(nn.Module):
    """The token embedding (``word_embeddings``)."""

    def __init__(self, config: StepLLMConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(config.padded_vocab_size, config.hidden_size)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """[B, S] -> [B, S, D]."""
        return self.word_embeddings(input_ids)


class Transformer(nn.Module):
    """The decoder layers (``layers``)."""

    def __init__(self, config: StepLLMConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(TransformerBlock(config) for _ in range(config.num_layers))

    def forward(self, hidden: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """[B, S, D] -> [B, S, D]."""
        for layer in self.layers:
            hidden = layer(hidden, bias)
        return hidden


class StepLLMModel(PreTrainedModel):
    """step_llm: token ids [B, S] -> last hidden states [B, S, D]; causal, so right padding never reaches a token."""

    config_class = StepLLMConfig
    base_model_prefix = "step_llm"
    _no_split_modules = ["TransformerBlock"]

    def __init__(self, config: StepLLMConfig) -> None:
        super().__init__(config)
        self.tok_embeddings = Embedding(config)
        self.transformer = Transformer(config)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        elif isinstance(module, RMSNorm):
            nn.init.ones_(module.weight)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The last layer's hidden states; ``attention_mask`` is accepted and unused (the release's)."""
        hidden = self.tok_embeddings(input_ids)
        bias = alibi_bias(self.config.num_attention_heads, input_ids.shape[1], input_ids.device)
        return self.transformer(hidden, bias)


class StepTokenizer:
    """The release's framing of a sentencepiece model: [bos, pieces (≤ max_length - 2), eos, pad ...]."""

    def __init__(self, processor, max_length: int = 320) -> None:
        self.processor = processor
        self.max_length = max_length

    @classmethod
    def from_file(cls, path: str, max_length: int = 320) -> StepTokenizer:
        """From the released ``step1_chat_tokenizer.model``."""
        import sentencepiece

        return cls(sentencepiece.SentencePieceProcessor(model_file=str(path)), max_length)

    @property
    def vocab_size(self) -> int:
        """The sentencepiece vocabulary size."""
        return self.processor.get_piece_size()

    def __call__(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and attention mask [B, max_length] of ``prompts``."""
        ids, masks = [], []
        for prompt in prompts:
            tokens = [BOS_ID, *self.processor.encode_as_ids(prompt)[: self.max_length - 2], EOS_ID]
            pad = self.max_length - len(tokens)
            ids.append(tokens + [PAD_ID] * pad)
            masks.append([1] * len(tokens) + [0] * pad)
        return torch.tensor(ids, dtype=torch.long), torch.tensor(masks, dtype=torch.long)
