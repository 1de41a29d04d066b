"""Qwen2_5_VLConverter: Hugging Face <-> MindSpeed-MM is lossless in Megatron's layout, and a training run exports."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from transformers import Qwen2_5_VLForConditionalGeneration

from mm_convert.cli import main
from mm_core.checkpoint import load_model_state
from mm_models_vlm.qwen2_5_vl.model import load_model

CONVERTER = "Qwen2_5_VLConverter"


def _parallel(vit: str, llm: str, prefix: str = "parallel_config") -> list[str]:
    return [f"--cfg.{prefix}.vit_pp_layers", vit, f"--cfg.{prefix}.llm_pp_layers", llm]


def _hf_to_mm(hf, mm, vit: str, llm: str) -> int:
    return main([CONVERTER, "hf_to_mm", "--cfg.mm_dir", str(mm), "--cfg.hf_config.hf_dir", str(hf),
                 *_parallel(vit, llm), "--cfg.parallel_config.tp_size", "1"])


def _stage(mm, name: str) -> dict:
    return torch.load(mm / "release" / name / "model_optim_rng.pt", weights_only=False)


def _logits(model, processor) -> torch.Tensor:
    ids = processor.tokenizer("What shape is in the image?", return_tensors="pt").input_ids
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_hf_to_mm_resplit_mm_to_hf_is_bitwise_equal(tiny_dir, processor, tmp_path):
    # vit on stage 0, one LLM layer on each stage; then re-cut with virtual chunks and back into one stage.
    assert _hf_to_mm(tiny_dir, tmp_path / "mm", "[[2,0]]", "[[1,1]]") == 0
    assert main([CONVERTER, "resplit", "--cfg.source_dir", str(tmp_path / "mm"), "--cfg.target_dir",
                 str(tmp_path / "vpp"), "--cfg.hf_config.hf_dir", str(tiny_dir),
                 *_parallel("[[1,1],[0,0]]", "[[0,1],[1,0]]", "target_parallel_config")]) == 0
    assert main([CONVERTER, "resplit", "--cfg.source_dir", str(tmp_path / "vpp"), "--cfg.target_dir",
                 str(tmp_path / "one"), "--cfg.hf_config.hf_dir", str(tiny_dir),
                 *_parallel("[[2]]", "[[2]]", "target_parallel_config")]) == 0
    assert main([CONVERTER, "mm_to_hf", "--cfg.save_hf_dir", str(tmp_path / "hf"), "--cfg.mm_dir",
                 str(tmp_path / "one"), "--cfg.hf_config.hf_dir", str(tiny_dir), *_parallel("[2]", "[2]")]) == 0
    before, after = load_file(tiny_dir / "model.safetensors"), load_file(tmp_path / "hf" / "model.safetensors")
    assert before.keys() == after.keys()
    assert all(before[k].dtype == after[k].dtype and torch.equal(before[k], after[k]) for k in before)
    assert (tmp_path / "hf" / "tokenizer.json").is_file() and (tmp_path / "hf" / "config.json").is_file()
    torch.testing.assert_close(_logits(load_model(tmp_path / "hf").eval(), processor),
                               _logits(load_model(tiny_dir).eval(), processor))


def test_mm_checkpoint_is_in_megatrons_layout(tiny_dir, model, tmp_path):
    assert _hf_to_mm(tiny_dir, tmp_path / "mm", "[[2,0]]", "[[1,1]]") == 0
    first = _stage(tmp_path / "mm", "mp_rank_00_000")["model"]
    last = _stage(tmp_path / "mm", "mp_rank_00_001")["model"]
    assert {"image_encoder.encoder.patch_embed.proj.weight", "image_encoder.projector.layernorm.weight",
            "text_decoder.embedding.word_embeddings.weight"} <= set(first)
    assert "text_decoder.decoder.layers.1.mlp.linear_fc1.weight" not in first
    # Tied embeddings: the last stage carries the output layer as a copy of the embedding.
    assert torch.equal(last["text_decoder.output_layer.weight"], first["text_decoder.embedding.word_embeddings.weight"])
    assert "text_decoder.decoder.final_layernorm.weight" in last

    # Megatron splits linear_qkv per key-value group into [q of the group's heads, k, v].
    text = model.config.text_config
    groups, head_dim = text.num_key_value_heads, text.hidden_size // text.num_attention_heads
    attention = model.model.language_model.layers[1].self_attn
    x = torch.randn(3, text.hidden_size)
    mixed = torch.nn.functional.linear(x, last["text_decoder.decoder.layers.0.self_attention.linear_qkv.weight"],
                                       last["text_decoder.decoder.layers.0.self_attention.linear_qkv.bias"])
    q, k, v = mixed.view(3, groups, -1).split([text.num_attention_heads // groups * head_dim, head_dim, head_dim], -1)
    with torch.no_grad():
        torch.testing.assert_close(q.reshape(3, -1), attention.q_proj(x))
        torch.testing.assert_close(k.reshape(3, -1), attention.k_proj(x))
        torch.testing.assert_close(v.reshape(3, -1), attention.v_proj(x))
    # The vision qkv is interleaved head by head, and linear_fc1 is gate then up.
    block = model.model.visual.blocks[1]
    heads, width = model.config.vision_config.num_heads, model.config.vision_config.hidden_size
    y = torch.randn(3, width)
    vit = "image_encoder.encoder.blocks.layers.1."
    mixed = torch.nn.functional.linear(y, first[vit + "self_attention.linear_qkv.weight"],
                                       first[vit + "self_attention.linear_qkv.bias"]).view(3, heads, 3, -1)
    fc1 = torch.nn.functional.linear(y, first[vit + "mlp.linear_fc1.weight"], first[vit + "mlp.linear_fc1.bias"])
    with torch.no_grad():
        torch.testing.assert_close(mixed.transpose(1, 2).reshape(3, -1), block.attn.qkv(y))
        torch.testing.assert_close(fc1, torch.cat([block.mlp.gate_proj(y), block.mlp.up_proj(y)], -1))


@pytest.mark.parametrize(("vit", "llm", "message"), [
    ("[[2,0]]", "[[1,2]]", "the llm layout [[1, 2]] holds 3 layers but"),
    ("[[2]]", "[[1,1]]", "vit_pp_layers [[2]] and llm_pp_layers [[1, 1]] must list the same number of stages"),
    ("[[2]]", "[[two]]", "--cfg.parallel_config.llm_pp_layers must be layers per stage such as 30"),
])
def test_layout_mismatch_is_one_error_and_nothing_is_written(tiny_dir, tmp_path, capsys, vit, llm, message):
    assert _hf_to_mm(tiny_dir, tmp_path / "mm", vit, llm) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "mm").exists() and list(tmp_path.iterdir()) == []


def test_mm_to_hf_checks_the_stated_layout_and_tensor_parallelism(tiny_dir, tmp_path, capsys):
    assert _hf_to_mm(tiny_dir, tmp_path / "mm", "[[2,0]]", "[[1,1]]") == 0
    back = [CONVERTER, "mm_to_hf", "--cfg.save_hf_dir", str(tmp_path / "hf"), "--cfg.mm_dir", str(tmp_path / "mm"),
            "--cfg.hf_config.hf_dir", str(tiny_dir)]
    assert main([*back, *_parallel("[2]", "[2]")]) == 2
    err = capsys.readouterr().err
    assert "is cut as vit [[2, 0]], llm [[1, 1]], not as --cfg.parallel_config says (vit [[2]]" in err
    assert main([*back, *_parallel("[2]", "[2]"), "--cfg.parallel_config.tp_size", "2"]) == 2
    assert "has 1 tensor-parallel ranks, not --cfg.parallel_config.tp_size 2" in capsys.readouterr().err
    assert not (tmp_path / "hf").exists()


def test_export_subcommand_writes_what_from_pretrained_loads(mm_train, processor, tmp_path):
    result = mm_train(["qwen2_5_vl"], "training.train_iters=1", "training.save_interval=1",
                      "data.dataset_param.basic_parameters.preprocessing_num_workers=1")
    assert main([CONVERTER, "export", "--cfg.source_path", str(result.output_dir), "--cfg.target_path",
                 str(tmp_path / "exported")]) == 0
    exported = Qwen2_5_VLForConditionalGeneration.from_pretrained(tmp_path / "exported", dtype=torch.float32).eval()
    trained = load_model(result.output_dir / "cache" / "tiny-qwen2_5_vl").eval()
    load_model_state(result.checkpoint, trained)
    torch.testing.assert_close(_logits(exported, processor), _logits(trained, processor))
    assert (tmp_path / "exported" / "tokenizer.json").is_file()
