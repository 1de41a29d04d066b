"""Qwen2_5_VLConverter with MindSpeed-MM's current options: resplit by source/target_parallel_config without a
config, enable_canonical_hf_struct, and dcp_to_hf of its FSDP2 checkpoints (DCP)."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.distributed.checkpoint as dcp
from safetensors.torch import load_file, save_file

from mm_convert import TensorSource, read_megatron
from mm_convert.cli import main
from mm_convert.tp_split import merge_tp
from mm_models_vlm.qwen2_5_vl.convert import QwenLayout, qwen_pipeline, tp_split

CONVERTER = "Qwen2_5_VLConverter"


def _run(*argv) -> int:
    return main([CONVERTER, *(str(a) for a in argv)])


def _parallel(prefix: str, vit: str, llm: str, tp: int) -> list[str]:
    return [f"--cfg.{prefix}.vit_pp_layers", vit, f"--cfg.{prefix}.llm_pp_layers", llm, f"--cfg.{prefix}.tp_size",
            str(tp)]


def _assert_same_weights(tiny_dir, folder) -> None:
    before, after = load_file(tiny_dir / "model.safetensors"), load_file(folder / "model.safetensors")
    assert before.keys() == after.keys()
    assert all(before[k].dtype == after[k].dtype and torch.equal(before[k], after[k]) for k in before)
    assert (folder / "tokenizer.json").is_file() and (folder / "config.json").is_file()


def _hf_to_mm(tiny_dir, mm, vit: str, llm: str, tp: int, *extra) -> int:
    return _run("hf_to_mm", "--cfg.mm_dir", mm, "--cfg.hf_config.hf_dir", tiny_dir,
                *_parallel("parallel_config", vit, llm, tp), *extra)


def test_resplit_with_source_and_target_parallel_config_and_no_hf_config(tiny_dir, tmp_path, capsys):
    assert _hf_to_mm(tiny_dir, tmp_path / "mm", "[[2,0]]", "[[1,1]]", 1) == 0
    # examples/qwen2.5vl/README.md's resplit: flat per-stage lists, no hf_config (the tied copy is recognized).
    assert _run("resplit", "--cfg.source_dir", tmp_path / "mm", "--cfg.target_dir", tmp_path / "tp2",
                *_parallel("source_parallel_config", "[2,0]", "[1,1]", 1),
                *_parallel("target_parallel_config", "[2]", "[2]", 2)) == 0
    assert sorted(p.name for p in (tmp_path / "tp2" / "release").iterdir()) == ["mp_rank_00", "mp_rank_01"]
    assert _run("mm_to_hf", "--cfg.save_hf_dir", tmp_path / "hf", "--cfg.mm_dir", tmp_path / "tp2",
                "--cfg.hf_config.hf_dir", tiny_dir, *_parallel("parallel_config", "[2]", "[2]", 2)) == 0
    _assert_same_weights(tiny_dir, tmp_path / "hf")
    assert _run("resplit", "--cfg.source_dir", tmp_path / "mm", "--cfg.target_dir", tmp_path / "bad",
                *_parallel("source_parallel_config", "[2]", "[2]", 1),
                *_parallel("target_parallel_config", "[2]", "[2]", 1)) == 2
    assert ("is cut as vit [[2, 0]], llm [[1, 1]], not as --cfg.source_parallel_config says (vit [[2]], llm [[2]])"
            in capsys.readouterr().err)
    assert not (tmp_path / "bad").exists()


def test_enable_canonical_hf_struct_keeps_qkv_and_gate_up_apart(tiny_dir, tmp_path, capsys):
    canonical = ("--cfg.common_model_config.enable_canonical_hf_struct", "true")
    assert _hf_to_mm(tiny_dir, tmp_path / "mm", "[[2]]", "[[2]]", 2, *canonical) == 0
    ranks = read_megatron(tmp_path / "mm", qwen_pipeline(tied=True)).sources
    whole = merge_tp(ranks, tp_split)
    hf = load_file(tiny_dir / "model.safetensors")
    assert torch.equal(whole["text_decoder.decoder.layers.1.self_attention.k_proj.weight"],
                       hf["model.layers.1.self_attn.k_proj.weight"])
    assert torch.equal(whole["image_encoder.encoder.blocks.layers.0.self_attention.linear_qkv.weight"],
                       hf["visual.blocks.0.attn.qkv.weight"])
    assert torch.equal(ranks[1]["image_encoder.encoder.blocks.layers.0.mlp.up_proj.weight"],
                       hf["visual.blocks.0.mlp.up_proj.weight"].chunk(2)[1])
    assert not any("linear_fc1" in key and "decoder.layers" in key for key in whole)
    back = ["mm_to_hf", "--cfg.save_hf_dir", tmp_path / "hf", "--cfg.mm_dir", tmp_path / "mm",
            "--cfg.hf_config.hf_dir", tiny_dir, *_parallel("parallel_config", "[2]", "[2]", 2)]
    assert _run(*back) == 2
    assert "enable_canonical_hf_struct must be true" in capsys.readouterr().err
    assert _run(*back, *canonical) == 0
    _assert_same_weights(tiny_dir, tmp_path / "hf")


def _save_dcp(folder, state: dict) -> None:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.save(state, checkpoint_id=str(folder), no_dist=True)


def test_dcp_to_hf_of_fsdp2_checkpoints(tiny_dir, tmp_path):
    qwen = QwenLayout(tiny_dir)
    hf = load_file(tiny_dir / "model.safetensors")
    mm = qwen.rules.to_mm(_source(hf))
    mcore = {k: mm[k] for k in mm}
    mcore["text_decoder.output_layer.weight"] = mcore["text_decoder.embedding.word_embeddings.weight"].clone()
    # Megatron's torch_dist (--use-torch-fsdp2 --ckpt-format torch_dist): no model. prefix, layers stacked.
    stacked = {}
    for key, value in mcore.items():
        for stack in qwen.pipeline.stacks:
            index = stack.layer_of(key)
            if index is not None:
                stacked.setdefault(stack.layers + key[len(stack.layers):].split(".", 1)[1], {})[index] = value
                break
        else:
            stacked[key] = value
    stacked = {k: torch.stack([v[i] for i in sorted(v)]) if isinstance(v, dict) else v for k, v in stacked.items()}
    _save_dcp(tmp_path / "save" / "iter_0000002", stacked)
    (tmp_path / "save" / "latest_checkpointed_iteration.txt").write_text("2")
    assert _run("dcp_to_hf", "--load_dir", tmp_path / "save", "--save_dir", tmp_path / "a", "--model_assets_dir",
                tiny_dir) == 0
    _assert_same_weights(tiny_dir, tmp_path / "a")
    # GenericDCPConverter's layout: model.<Hugging Face name> in release/, as in MindSpeed-MM's FSDP2 quick start.
    _save_dcp(tmp_path / "generic" / "release", {"model": hf, "checkpoint_version": 3.0})
    assert _run("dcp_to_hf", "--load_dir", tmp_path / "generic" / "release", "--save_dir", tmp_path / "b",
                "--model_assets_dir", tiny_dir) == 0
    _assert_same_weights(tiny_dir, tmp_path / "b")


def _source(tensors: dict[str, torch.Tensor]) -> TensorSource:
    return TensorSource({k: v.to("meta") for k, v in tensors.items()}, tensors.__getitem__, "hf")


@pytest.mark.parametrize(("argv", "message"), [
    (["dcp_to_hf", "--load_dir", "{tmp}", "--save_dir", "{tmp}/out", "--model_assets_dir", "{hf}"],
     "holds no torch.distributed.checkpoint"),
    (["dcp_to_hf", "--load_dir", "{tmp}", "--save_dir", "{tmp}/out", "--model_assets_dir", "{tmp}"],
     "--model_assets_dir {tmp} is not a Hugging Face folder (no config.json)"),
])
def test_dcp_to_hf_bad_input_is_one_error(tiny_dir, tmp_path, capsys, argv, message):
    assert _run(*(a.format(tmp=tmp_path, hf=tiny_dir) for a in argv)) == 2
    assert message.format(tmp=tmp_path) in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_lora_hf_to_mm_of_a_peft_adapter_as_the_readme_writes_it(tiny_dir, tmp_path, capsys):
    hf = load_file(tiny_dir / "model.safetensors")
    torch.manual_seed(3)
    # transformers >= 4.52's module names under peft's base_model.model. -> the weights they adapt
    modules = {"model.language_model.layers.1.self_attn.q_proj": "model.layers.1.self_attn.q_proj.weight",
               "model.language_model.layers.0.self_attn.o_proj": "model.layers.0.self_attn.o_proj.weight",
               "model.visual.blocks.1.attn.qkv": "visual.blocks.1.attn.qkv.weight"}
    lora = {}
    for name, weight in modules.items():
        rows, cols = hf[weight].shape
        lora[f"base_model.model.{name}.lora_A.weight"] = torch.randn(4, cols)
        lora[f"base_model.model.{name}.lora_B.weight"] = torch.randn(rows, 4)
    (tmp_path / "lora").mkdir()
    save_file(lora, str(tmp_path / "lora" / "adapter_model.safetensors"))
    argv = ["lora_hf_to_mm", "--cfg.mm_dir", tmp_path / "mm", "--cfg.hf_config.hf_dir", tmp_path / "lora",
            *_parallel("parallel_config", "[[2]]", "[[2]]", 2), "--cfg.common_model_config.model_prefix",
            "base_model.model.", "--cfg.common_model_config.new_transformers_weight_key", "true"]
    assert _run(*argv) == 2
    assert "give --cfg.common_model_config.enable_canonical_hf_struct true" in capsys.readouterr().err
    assert _run(*argv, "--cfg.common_model_config.enable_canonical_hf_struct", "true") == 0
    rank = torch.load(tmp_path / "mm" / "release" / "mp_rank_01" / "model_optim_rng.pt", weights_only=True)["model"]
    q = "base_model.model.model.language_model.layers.1.self_attn.q_proj"
    assert torch.equal(rank["text_decoder.decoder.layers.1.self_attention.q_proj.lora_B.default.weight"],
                       lora[f"{q}.lora_B.weight"].chunk(2)[1])
    o = "base_model.model.model.language_model.layers.0.self_attn.o_proj"
    assert torch.equal(rank["text_decoder.decoder.layers.0.self_attention.linear_proj.lora_A.default.weight"],
                       lora[f"{o}.lora_A.weight"].chunk(2, 1)[1])
    assert torch.equal(rank["image_encoder.encoder.blocks.layers.1.self_attention.linear_qkv.lora_A.default.weight"],
                       lora["base_model.model.model.visual.blocks.1.attn.qkv.lora_A.weight"])
