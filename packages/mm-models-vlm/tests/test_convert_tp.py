"""Qwen2_5_VLConverter with tp_size: MindSpeed-MM's mp_rank_TT shards hold each rank's rows or columns, and
tp 1 -> tp 2 -> tp 1 gives back the Hugging Face tensors bit for bit."""

from __future__ import annotations

import torch
from safetensors.torch import load_file

from mm_convert.cli import main

CONVERTER = "Qwen2_5_VLConverter"
LLM = "text_decoder.decoder.layers.{}."
VIT = "image_encoder.encoder.blocks.layers.{}."


def _parallel(vit: str, llm: str, tp: int, prefix: str = "parallel_config") -> list[str]:
    return [f"--cfg.{prefix}.vit_pp_layers", vit, f"--cfg.{prefix}.llm_pp_layers", llm, f"--cfg.{prefix}.tp_size",
            str(tp)]


def _hf_to_mm(hf, mm, tp: int, vit: str = "[[2]]", llm: str = "[[2]]") -> int:
    return main([CONVERTER, "hf_to_mm", "--cfg.mm_dir", str(mm), "--cfg.hf_config.hf_dir", str(hf),
                 *_parallel(vit, llm, tp)])


def _stage(mm, name: str) -> dict:
    return torch.load(mm / "release" / name / "model_optim_rng.pt", weights_only=False)["model"]


def _glu_rows(t: torch.Tensor, rank: int) -> torch.Tensor:
    gate, up = t.chunk(2)
    return torch.cat([gate.chunk(2)[rank], up.chunk(2)[rank]])


def test_tp_shards_hold_each_ranks_rows_and_columns(tiny_dir, tmp_path):
    assert _hf_to_mm(tiny_dir, tmp_path / "one", 1) == 0
    assert _hf_to_mm(tiny_dir, tmp_path / "two", 2) == 0
    assert sorted(p.name for p in (tmp_path / "two" / "release").iterdir()) == ["mp_rank_00", "mp_rank_01"]
    whole = _stage(tmp_path / "one", "mp_rank_00")
    rows = [LLM.format(1) + "self_attention.linear_qkv.weight", LLM.format(0) + "self_attention.linear_qkv.bias",
            VIT.format(1) + "self_attention.linear_qkv.weight", "text_decoder.embedding.word_embeddings.weight",
            "image_encoder.projector.encoder.linear_fc1.weight"]
    columns = [LLM.format(0) + "self_attention.linear_proj.weight", LLM.format(1) + "mlp.linear_fc2.weight",
               VIT.format(0) + "self_attention.linear_proj.weight", "image_encoder.projector.encoder.linear_fc2.weight"]
    glu = [LLM.format(1) + "mlp.linear_fc1.weight", VIT.format(0) + "mlp.linear_fc1.weight",
           VIT.format(0) + "mlp.linear_fc1.bias"]
    whole_on_each = ["text_decoder.decoder.final_layernorm.weight", LLM.format(0) + "input_layernorm.weight",
                     VIT.format(0) + "self_attention.linear_proj.bias", VIT.format(1) + "mlp.linear_fc2.bias",
                     "image_encoder.encoder.patch_embed.proj.weight"]
    for rank in range(2):
        shard = _stage(tmp_path / "two", f"mp_rank_{rank:02d}")
        assert shard.keys() == whole.keys()
        for key in rows:
            assert torch.equal(shard[key], whole[key].chunk(2, 0)[rank]), key
        for key in columns:
            assert torch.equal(shard[key], whole[key].chunk(2, 1)[rank]), key
        for key in glu:
            assert torch.equal(shard[key], _glu_rows(whole[key], rank)), key
        for key in whole_on_each:
            assert torch.equal(shard[key], whole[key]), key
    # Rows of linear_qkv split by whole key-value groups: rank 0 holds group 0's [q, k, v].
    qkv = whole[LLM.format(0) + "self_attention.linear_qkv.weight"]
    assert _stage(tmp_path / "two", "mp_rank_00")[LLM.format(0) + "self_attention.linear_qkv.weight"].shape == (
        qkv.shape[0] // 2, qkv.shape[1])


def test_tp_1_to_2_to_1_gives_back_the_hf_tensors(tiny_dir, tmp_path):
    """hf -> tp 2 with two PP stages -> resplit to tp 1 in one stage -> hf; and tp 2 straight back to hf."""
    assert _hf_to_mm(tiny_dir, tmp_path / "two", 2, "[[2,0]]", "[[1,1]]") == 0
    assert {p.name for p in (tmp_path / "two" / "release").iterdir()} == {
        "mp_rank_00_000", "mp_rank_00_001", "mp_rank_01_000", "mp_rank_01_001"}
    assert main([CONVERTER, "resplit", "--cfg.source_dir", str(tmp_path / "two"), "--cfg.target_dir",
                 str(tmp_path / "one"), "--cfg.hf_config.hf_dir", str(tiny_dir),
                 *_parallel("[[2]]", "[[2]]", 1, "target_parallel_config")]) == 0
    before = load_file(tiny_dir / "model.safetensors")
    for mm, vit, llm, tp in (("one", "[2]", "[2]", 1), ("two", "[[2,0]]", "[[1,1]]", 2)):
        assert main([CONVERTER, "mm_to_hf", "--cfg.save_hf_dir", str(tmp_path / f"hf-{mm}"), "--cfg.mm_dir",
                     str(tmp_path / mm), "--cfg.hf_config.hf_dir", str(tiny_dir), *_parallel(vit, llm, tp)]) == 0
        after = load_file(tmp_path / f"hf-{mm}" / "model.safetensors")
        assert before.keys() == after.keys()
        assert all(before[k].dtype == after[k].dtype and torch.equal(before[k], after[k]) for k in before), mm


def test_tp_size_must_divide_the_heads(tiny_dir, tmp_path, capsys):
    """The tiny model has 2 key-value heads (and 2 vision heads): tp 4 cannot split linear_qkv by whole groups."""
    assert _hf_to_mm(tiny_dir, tmp_path / "mm", 4) == 2
    assert "--cfg.parallel_config.tp_size 4 does not divide the model's 2 key-value heads" in capsys.readouterr().err
    assert not (tmp_path / "mm").exists()
