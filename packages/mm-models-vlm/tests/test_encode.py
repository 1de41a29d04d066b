"""Tokenization: the processor's chat template, assistant-only labels, vision tokens, truncation and drops."""

from __future__ import annotations

import dataclasses

import pytest
from PIL import Image

from mm_core.errors import DataError
from mm_models_vlm.qwen2_5_vl.cache import encode_all
from mm_models_vlm.qwen2_5_vl.encode import IGNORE_INDEX, Encoder


def _trained_text(encoder, encoded) -> str:
    return encoder.tokenizer.decode([t for t, label in zip(encoded.input_ids, encoded.labels) if label != IGNORE_INDEX])


def test_ids_equal_the_processors_own_tokenization(encoder, processor, record, image_files, settings):
    rec = record("<image>What shape is in the image?", "A red circle.", images=image_files[:1])
    encoded = encoder.encode(rec)
    text = processor.apply_chat_template(rec.chat(), tokenize=False)
    with Image.open(image_files[0]) as image:
        reference = processor(text=[text], images=[image.convert("RGB")], size=settings.image_size())
    assert encoded.input_ids == reference["input_ids"][0]


def test_labels_only_on_assistant_tokens(encoder, record, image_files):
    rec = record("<image>What shape is in the image?", "A red circle.", "Which colour is the shape?", "Red.",
                 images=image_files[:1])
    encoded = encoder.encode(rec)
    assert _trained_text(encoder, encoded) == "A red circle.<|im_end|>\nRed.<|im_end|>\n"
    assert len(encoded.labels) == len(encoded.input_ids)


def test_mask_history_and_train_on_prompt(processor, settings, record):
    rec = record("What shape is in the image?", "A red circle.", "Which colour is the shape?", "Red.")
    last_only = Encoder(processor, dataclasses.replace(settings, mask_history=True))
    assert _trained_text(last_only, last_only.encode(rec)) == "Red.<|im_end|>\n"
    everything = Encoder(processor, dataclasses.replace(settings, train_on_prompt=True))
    encoded = everything.encode(rec)
    assert all(label != IGNORE_INDEX for label in encoded.labels)


def test_dynamic_resolution_follows_min_and_max_pixels(processor, settings, record, image_files):
    counts = []
    for max_pixels in (56 * 56, 112 * 112):
        encoder = Encoder(processor, dataclasses.replace(settings, image_max_pixels=max_pixels))
        encoded = [encoder.encode(record("<image>Describe.", "A red circle.", images=[f])) for f in image_files]
        counts.append([e.input_ids.count(processor.image_token_id) for e in encoded])
    assert counts[0] == [4, 2, 2]  # shrunk to at most 56x56 pixels, aspect kept: 2x2, 1x2, 1x2 merged tokens
    assert counts[1] == [4, 6, 8]  # 56x56, 84x56 and 56x112 at their own size


def test_truncation_keeps_vision_tokens_and_counts_the_cut(processor, settings, record, image_files):
    long_answer = "A red circle. " * 40
    full = Encoder(processor, settings).encode(record("<image>Describe.", long_answer, images=image_files[:1]))
    cutoff = len(full.input_ids) - 30
    encoded = Encoder(processor, dataclasses.replace(settings, cutoff_len=cutoff)).encode(
        record("<image>Describe.", long_answer, images=image_files[:1]))
    assert len(encoded.input_ids) == cutoff and encoded.truncated_tokens == 30
    assert encoded.input_ids.count(processor.image_token_id) == full.input_ids.count(processor.image_token_id)


def test_samples_that_cannot_fit_are_dropped_and_counted(tiny_dir, processor, settings, record, image_files):
    tight = dataclasses.replace(settings, cutoff_len=40)
    records = [record("Describe the picture. " * 4 + "<image>", "A red circle.", images=[image_files[2]]),
               record("Hi.", "A red circle. " * 20),  # truncated, answer partly kept
               record("<image>Hi.", "A red circle.", images=[image_files[0]])]
    with pytest.raises(DataError, match="beyond cutoff_len 40"):
        Encoder(processor, tight).encode(records[0])
    samples, stats = encode_all(records, tiny_dir, tight, workers=1, chunk_size=2)
    assert (stats.samples, stats.dropped, stats.truncated_samples) == (2, 1, 1)
    assert stats.truncated_tokens > 0 and "beyond cutoff_len" in stats.drop_reasons[0]
    assert [len(s.input_ids) for s in samples][0] == 40
    with pytest.raises(DataError, match="beyond cutoff_len"):
        encode_all(records, tiny_dir, tight, workers=1, chunk_size=2, on_bad_sample="error")


def test_unreadable_image_is_a_data_error(encoder, record, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    with pytest.raises(DataError, match="cannot be read"):
        encoder.encode(record("<image>Hi.", "Hello.", images=[broken]))
