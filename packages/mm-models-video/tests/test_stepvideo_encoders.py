"""Step-Video's frozen parts: step_llm (causal ALiBi, grouped queries, the release's names, save/load), the tokenizer
framing, hunyuan_clip, and the VAE v2 (17 frames to 3 latents, chunk blending, the released file's names)."""

from __future__ import annotations

import math

import torch
from safetensors.torch import save_file

from mm_models_video.stepvideo.flavors import FLAVORS
from mm_models_video.stepvideo.step_llm import StepLLMConfig, StepLLMModel, alibi_bias
from mm_models_video.stepvideo.text_encoders import TINY_STEP_LLM, tiny_llm_tokenizer
from mm_models_video.stepvideo.vae import StepVideoVAE, blend_chunks


def _llm() -> StepLLMModel:
    torch.manual_seed(0)
    return StepLLMModel(StepLLMConfig(**TINY_STEP_LLM)).eval()


def test_step_llm_names_and_save_load(tmp_path) -> None:
    model = _llm()
    names = set(model.state_dict())
    assert "tok_embeddings.word_embeddings.weight" in names
    assert {f"transformer.layers.0.{n}.weight" for n in (
        "attention.wqkv", "attention.wo", "feed_forward.w1", "feed_forward.w2", "attention_norm", "ffn_norm")} <= names
    heads, groups, hidden = 4, 2, 64
    assert model.transformer.layers[0].attention.wqkv.weight.shape == (hidden + 2 * groups * hidden // heads, hidden)
    model.save_pretrained(tmp_path)
    loaded = StepLLMModel.from_pretrained(tmp_path).eval()
    ids = torch.randint(0, 98, (2, 7))
    torch.testing.assert_close(loaded(ids), model(ids))


def test_step_llm_is_causal_with_alibi_and_grouped_queries() -> None:
    model = _llm()
    ids = torch.randint(0, 98, (1, 9))
    out = model(ids)
    changed = ids.clone()
    changed[0, 6:] = 5
    torch.testing.assert_close(model(changed)[:, :6], out[:, :6])  # later tokens (padding) never reach earlier ones
    bias = alibi_bias(4, 3, torch.device("cpu"))
    slopes = torch.tensor([2.0 ** (-2 * (h + 1)) for h in range(4)])  # 2^(-8/4·h) for 4 heads
    assert torch.isinf(bias[:, 0, 1]).all()
    torch.testing.assert_close(bias[:, 2, 0], -math.sqrt(2) * slopes)
    # Head h reads group h // 2 (wqkv: all queries, then k and v of each group).
    attn = model.transformer.layers[0].attention
    x = torch.randn(1, 3, 64)
    q, kv = attn.wqkv(x).split([64, 64], -1)
    q, (k, v) = q.unflatten(-1, (4, 16)), kv.unflatten(-1, (2, 32)).chunk(2, -1)
    heads = [torch.softmax(q[:, :, h] @ k[:, :, h // 2].transpose(-1, -2) / 4 + bias[h], -1) @ v[:, :, h // 2]
             for h in range(4)]
    torch.testing.assert_close(attn(x, bias), attn.wo(torch.cat(heads, -1)))


def test_step_tokenizer_frames_prompts_as_the_release() -> None:
    tokenizer = tiny_llm_tokenizer(8)
    ids, mask = tokenizer(["ab", "a very long prompt"])
    pieces = tokenizer.processor.encode_as_ids("ab")
    assert ids[0].tolist() == [1, *pieces, 2] + [2] * (6 - len(pieces))  # bos, pieces, eos, then pad = eos
    assert mask[0].tolist() == [1] * (len(pieces) + 2) + [0] * (6 - len(pieces))
    assert mask[1].all() and ids[1, 0] == 1 and ids[1, -1] == 2  # truncated to 6 pieces between bos and eos


def _vae() -> StepVideoVAE:
    torch.manual_seed(0)
    return StepVideoVAE(**FLAVORS["tiny"].vae).eval()


def test_vae_compresses_17_frames_to_3_latents_and_decodes_chunks_back() -> None:
    vae = _vae()
    video = torch.rand(1, 34, 3, 32, 48) * 2 - 1
    with torch.no_grad():
        latents = vae.encode(video, sample=False)
        assert latents.shape == (1, 6, 4, 2, 3)
        # Each 17-frame chunk is encoded on its own.
        torch.testing.assert_close(latents[:, 3:], vae.encode(video[:, 17:], sample=False))
        decoded = vae.decode(latents)
        assert decoded.shape == video.shape
        chunks = torch.cat([vae.decoder(c.transpose(1, 2)).transpose(1, 2) for c in latents.split(3, 1)], 1)
    torch.testing.assert_close(decoded, blend_chunks(chunks))
    torch.testing.assert_close(decoded[:, :16], chunks[:, :16])
    torch.testing.assert_close(decoded[:, 17], 0.6 * chunks[:, 17] + 0.4 * chunks[:, 16])


def test_vae_loads_the_released_file_layout(tmp_path) -> None:
    vae = _vae()
    state = {k.replace("decoder.conv_out.conv.", "decoder.conv_out."): v.contiguous()
             for k, v in vae.state_dict().items()}
    assert "decoder.conv_out.weight" in state and "encoder.conv_out.conv.weight" in state
    save_file(state, tmp_path / "vae_v2.safetensors")
    torch.manual_seed(1)
    other = StepVideoVAE(**FLAVORS["tiny"].vae)
    other.load_release(tmp_path / "vae_v2.safetensors")
    for key, value in vae.state_dict().items():
        torch.testing.assert_close(other.state_dict()[key], value)


def test_text_encoders_stay_in_eval_mode() -> None:
    from stepvideo_testing import stepvideo_config

    from mm_models_video.stepvideo.build import build_text_encoders
    from mm_models_video.stepvideo.flavors import get_flavor

    encoders = build_text_encoders(stepvideo_config().model, get_flavor("tiny"))
    before = encoders(["a red circle"])
    # What a pipeline stage does: train() on the encoders themselves, not through the composite.
    encoders.train()
    assert not any(module.training for module in encoders.modules())
    after = encoders(["a red circle"])
    torch.testing.assert_close(after, before, rtol=0, atol=0)
