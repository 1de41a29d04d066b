"""A tiny character-level T5 tokenizer, built in memory for the tiny flavor (no download)."""

from __future__ import annotations

import string

from transformers import T5TokenizerFast


def build_char_tokenizer() -> T5TokenizerFast:
    """A T5TokenizerFast whose vocabulary is printable ASCII plus word-start letters (124 tokens)."""
    chars = sorted(set(string.ascii_letters + string.digits + string.punctuation))
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -1.0)]
    vocab += [(c, -2.0) for c in chars] + [("▁" + c, -1.5) for c in string.ascii_lowercase]
    return T5TokenizerFast(vocab=vocab, extra_ids=0)
