"""Step-Video's two frozen text encoders and their tokenizers: step_llm (320 tokens) and hunyuan_clip (77 tokens).

hunyuan_clip is transformers' BertModel with its BertTokenizer. Their features enter the transformer's
cross-attention as the release's caption server gives them: the LLM's hidden states with their mask, and CLIP's
last hidden states, every CLIP token attended.
"""

from __future__ import annotations

import functools
import io
import string
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from transformers import BertConfig, BertModel, BertTokenizer

from mm_models_video.pretrained import fixed_init, load_pretrained
from mm_models_video.stepvideo.step_llm import StepLLMConfig, StepLLMModel, StepTokenizer

LLM_LEN = 320
CLIP_LEN = 77
LLM_TOKENIZER_FILE = "step1_chat_tokenizer.model"

# The tiny encoders of the embedded run and the tests (fixed-seed random weights, tokenizers made in memory).
TINY_STEP_LLM = {
    "hidden_size": 64,
    "num_attention_heads": 4,
    "num_attention_groups": 2,
    "ffn_hidden_size": 128,
    "num_layers": 2,
    "layernorm_epsilon": 1e-5,
    "padded_vocab_size": 128,
}
TINY_CLIP = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 80,
}
_CORPUS = [string.ascii_lowercase, string.ascii_uppercase, string.digits + string.punctuation]


@functools.lru_cache(maxsize=1)
def _tiny_sentencepiece() -> bytes:
    import sentencepiece

    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(_CORPUS * 4), model_writer=model, vocab_size=100, model_type="char",
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, hard_vocab_limit=False, character_coverage=1.0, minloglevel=2,
    )
    return model.getvalue()


def tiny_llm_tokenizer(max_length: int) -> StepTokenizer:
    """A character-level sentencepiece model in the release's framing (under 128 ids), trained in memory."""
    import sentencepiece

    return StepTokenizer(sentencepiece.SentencePieceProcessor(model_proto=_tiny_sentencepiece()), max_length)


def tiny_clip_tokenizer(max_length: int) -> BertTokenizer:
    """A BertTokenizer whose WordPiece vocabulary is single characters (word-start and ``##`` continuations)."""
    chars = sorted(set(string.ascii_lowercase + string.digits + string.punctuation))
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars, *(f"##{c}" for c in chars)]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "vocab.txt"
        path.write_text("\n".join(vocab) + "\n", encoding="utf-8")
        return BertTokenizer(str(path), model_max_length=max_length)


def build_llm(path: str | None, dtype: torch.dtype, architecture: dict) -> StepLLMModel:
    """step_llm from the released folder ``path``, else the StepLLMConfig keys ``architecture``."""
    if path:
        return load_pretrained(StepLLMModel, path, "model.text_encoder.llm.from_pretrained", torch_dtype=dtype)
    return fixed_init(lambda: StepLLMModel(StepLLMConfig(**architecture)), dtype)


def build_clip(path: str | None, dtype: torch.dtype, architecture: dict, vocab_size: int) -> BertModel:
    """hunyuan_clip's BertModel from ``path`` (hunyuan_clip/clip_text_encoder), else the BertConfig ``architecture``."""
    if path:
        return load_pretrained(BertModel, path, "model.text_encoder.clip.from_pretrained", torch_dtype=dtype)
    return fixed_init(lambda: BertModel(BertConfig(vocab_size=vocab_size, **architecture)), dtype)


class StepVideoTextEncoders(nn.Module):
    """``llm`` (step_llm) and ``clip`` (hunyuan_clip) with their tokenizers: prompts -> the transformer's text."""

    def __init__(
        self, llm: StepLLMModel, clip: BertModel, llm_tokenizer: StepTokenizer, clip_tokenizer: BertTokenizer,
        clip_len: int = CLIP_LEN,
    ) -> None:
        super().__init__()
        self.llm, self.clip = llm, clip
        self.llm_tokenizer, self.clip_tokenizer = llm_tokenizer, clip_tokenizer
        self.clip_len = clip_len
        self.eval()

    def train(self, mode: bool = True) -> StepVideoTextEncoders:
        """Stay in eval mode whatever ``mode`` asks: the encoders are frozen and BERT's dropout would change the text.

        A pipeline stage sets the train mode of the modules it holds one by one, past the composite's own train().
        """
        return super().train(False)

    @property
    def llm_len(self) -> int:
        """The LLM's token count (320 in the releases)."""
        return self.llm_tokenizer.max_length

    @torch.no_grad()
    def forward(self, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        """``{"prompt_embeds" [B, 320, D_llm], "prompt_mask" [B, 320], "clip_embeds" [B, 77, D_clip], "clip_mask"
        [B, 77]}``, the embeddings in float32 (the transformer attends to every CLIP token; its mask is for stores).

        The LLM's states past each prompt's end are zeroed (the mask hides them from the transformer anyway).
        """
        device = self.llm.device
        ids, mask = (t.to(device) for t in self.llm_tokenizer(list(prompts)))
        llm = self.llm(ids, mask).float() * mask[..., None]
        tokens = self.clip_tokenizer(
            list(prompts), padding="max_length", max_length=self.clip_len, truncation=True,
            return_attention_mask=True, return_tensors="pt",
        ).to(self.clip.device)
        clip = self.clip(tokens.input_ids, attention_mask=tokens.attention_mask).last_hidden_state.float()
        return {"prompt_embeds": llm, "prompt_mask": mask, "clip_embeds": clip, "clip_mask": tokens.attention_mask}
