"""Qwen2_5_VLConverter with MindSpeed-MM's current options: resplit by source/target_parallel_config without a
config, enable_canonical_hf_struct, dcp_to_hf / hf_to_mm_dcp of its FSDP2 checkpoints (DCP), the LoRA subcommands
and hf_to_mm_ldt."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
import torch.distributed.checkpoint as dcp
from peft import PeftModel
from safetensors.torch import load_file, save_file

from mm_convert import TensorSource, read_megatron
from mm_convert.cli import main
from mm_convert.dcp_layout import read_mindspeed_dcp
from mm_convert.tp_split import merge_tp
from mm_core.plugins import load_plugins, make_config
from mm_models_vlm.qwen2_5_vl.build import build_model
from mm_models_vlm.qwen2_5_vl.model import load_model
from mm_models_vlm.qwen2_5_vl.qwen_layout import QwenLayout, qwen_pipeline, tp_split

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


# transformers >= 4.52's module names -> the weights they adapt
LORA_MODULES = {"model.language_model.layers.1.self_attn.q_proj": "model.layers.1.self_attn.q_proj.weight",
                "model.language_model.layers.0.self_attn.o_proj": "model.layers.0.self_attn.o_proj.weight",
                "model.visual.blocks.1.attn.qkv": "visual.blocks.1.attn.qkv.weight"}
LORA_NAMES = ("--cfg.common_model_config.model_prefix", "base_model.model.",
              "--cfg.common_model_config.new_transformers_weight_key", "true")
CANONICAL = ("--cfg.common_model_config.enable_canonical_hf_struct", "true")


def _peft_lora(tiny_dir, folder) -> dict[str, torch.Tensor]:
    """A rank-4 peft adapter of LORA_MODULES (peft's base_model.model. names) saved in ``folder``."""
    hf = load_file(tiny_dir / "model.safetensors")
    torch.manual_seed(3)
    lora = {}
    for name, weight in LORA_MODULES.items():
        rows, cols = hf[weight].shape
        lora[f"base_model.model.{name}.lora_A.weight"] = torch.randn(4, cols)
        lora[f"base_model.model.{name}.lora_B.weight"] = torch.randn(rows, 4)
    folder.mkdir()
    save_file(lora, str(folder / "adapter_model.safetensors"))
    return lora


def test_lora_hf_to_mm_of_a_peft_adapter_as_the_readme_writes_it(tiny_dir, tmp_path, capsys):
    lora = _peft_lora(tiny_dir, tmp_path / "lora")
    argv = ["lora_hf_to_mm", "--cfg.mm_dir", tmp_path / "mm", "--cfg.hf_config.hf_dir", tmp_path / "lora",
            *_parallel("parallel_config", "[[2]]", "[[2]]", 2), *LORA_NAMES]
    assert _run(*argv) == 2
    assert "give --cfg.common_model_config.enable_canonical_hf_struct true" in capsys.readouterr().err
    assert _run(*argv, *CANONICAL) == 0
    rank = torch.load(tmp_path / "mm" / "release" / "mp_rank_01" / "model_optim_rng.pt", weights_only=True)["model"]
    q = "base_model.model.model.language_model.layers.1.self_attn.q_proj"
    assert torch.equal(rank["text_decoder.decoder.layers.1.self_attention.q_proj.lora_B.default.weight"],
                       lora[f"{q}.lora_B.weight"].chunk(2)[1])
    o = "base_model.model.model.language_model.layers.0.self_attn.o_proj"
    assert torch.equal(rank["text_decoder.decoder.layers.0.self_attention.linear_proj.lora_A.default.weight"],
                       lora[f"{o}.lora_A.weight"].chunk(2, 1)[1])
    assert torch.equal(rank["image_encoder.encoder.blocks.layers.1.self_attention.linear_qkv.lora_A.default.weight"],
                       lora["base_model.model.model.visual.blocks.1.attn.qkv.lora_A.weight"])


def test_lora_mm_to_hf_gives_back_the_peft_adapter(tiny_dir, tmp_path, capsys):
    lora = _peft_lora(tiny_dir, tmp_path / "lora")
    # TP 2 and two stages: stage 0 holds no vision LoRA, stage 1's vision block is block 1 of the model
    assert _run("lora_hf_to_mm", "--cfg.mm_dir", tmp_path / "mm", "--cfg.hf_config.hf_dir", tmp_path / "lora",
                *_parallel("parallel_config", "[[1,1]]", "[[1,1]]", 2), *CANONICAL, *LORA_NAMES) == 0
    # examples/qwen2.5vl/README.md's lora_mm_to_hf: flat per-stage lists
    back = ["lora_mm_to_hf", "--cfg.save_hf_dir", tmp_path / "back", "--cfg.mm_dir", tmp_path / "mm", *CANONICAL,
            *LORA_NAMES]
    assert _run(*back, *_parallel("parallel_config", "[1,1]", "[1,1]", 2), "--cfg.lora_alpha", "8") == 0
    adapter = load_file(tmp_path / "back" / "adapter_model.safetensors")
    assert adapter.keys() == lora.keys() and all(torch.equal(adapter[k], lora[k]) for k in lora)
    config = json.loads((tmp_path / "back" / "adapter_config.json").read_text())
    assert (config["peft_type"], config["r"], config["lora_alpha"]) == ("LORA", 4, 8)
    assert sorted(config["target_modules"]) == sorted(LORA_MODULES)
    # peft loads it onto the Hugging Face model: exactly those modules adapted, with those weights
    peft = {k.replace(".default.", "."): v for k, v in PeftModel.from_pretrained(load_model(tiny_dir), tmp_path /
                                                                                  "back").state_dict().items()
            if ".lora_" in k}
    assert peft.keys() == lora.keys() and all(torch.equal(peft[k], lora[k]) for k in lora)
    assert _run(*back, *_parallel("parallel_config", "[2]", "[2]", 2)) == 2
    assert "has 2 pipeline slots (stages x chunks), the vit layout [[2]] has 1" in capsys.readouterr().err


def test_hf_to_mm_dcp_is_what_dcp_to_hf_and_load_read_back(tiny_dir, tmp_path):
    hf = load_file(tiny_dir / "model.safetensors")
    assert _run("hf_to_mm_dcp", "--cfg.mm_dir", tmp_path / "dcp", "--cfg.hf_config.hf_dir", tiny_dir) == 0
    # MindSpeed-MM's save_by_dcp: release/ with model.<its fused names>, no copy of the tied embedding
    assert (tmp_path / "dcp" / "latest_checkpointed_iteration.txt").read_text() == "release"
    written, expected = read_mindspeed_dcp(tmp_path / "dcp" / "release"), QwenLayout(tiny_dir).rules.to_mm(_source(hf))
    assert set(written) == set(expected) and "text_decoder.output_layer.weight" not in written
    assert all(torch.equal(written[k], expected[k]) for k in expected)
    assert _run("dcp_to_hf", "--load_dir", tmp_path / "dcp", "--save_dir", tmp_path / "hf", "--model_assets_dir",
                tiny_dir) == 0
    _assert_same_weights(tiny_dir, tmp_path / "hf")
    # mm run --load <that checkpoint> (model.from_pretrained) builds the Hugging Face weights
    plugin = load_plugins(["qwen2_5_vl"])
    loaded = build_model(make_config(plugin, "run", [], {}, [
        f"model.from_pretrained={tmp_path / 'dcp'}", f"data.dataset_param.basic_parameters.cache_dir={tmp_path}",
        f"data.dataset_param.preprocess_parameters.model_name_or_path={tiny_dir}"])).state_dict()
    reference = build_model(make_config(plugin, "run", [], {}, [f"model.from_pretrained={tiny_dir}"])).state_dict()
    assert loaded.keys() == reference.keys() and all(torch.equal(loaded[k], reference[k]) for k in reference)


def test_hf_to_mm_ldt_puts_the_llm_ends_on_the_first_stage(tiny_dir, tmp_path):
    # layerwise_disaggregated_training.md's U shape, tiny: 2 stages x 3 chunks, the LLM's layers in chunk 1 only
    layouts = _parallel("parallel_config", "[[1,0],[1,0],[0,0]]", "[[0,0],[0,2],[0,0]]", 2)
    assert _run("hf_to_mm_ldt", "--cfg.mm_dir", tmp_path / "ldt", "--cfg.hf_config.hf_dir", tiny_dir, *layouts) == 0
    stages = [torch.load(tmp_path / "ldt" / "release" / f"mp_rank_00_00{pp}" / "model_optim_rng.pt",
                         weights_only=True) for pp in (0, 1)]
    assert "text_decoder.embedding.word_embeddings.weight" in stages[0]["model1"]
    assert {"text_decoder.decoder.final_layernorm.weight", "text_decoder.output_layer.weight"} == {
        k for k in stages[0]["model2"]}
    assert sorted({k.split(".")[3] for k in stages[1]["model1"] if k.startswith("text_decoder.")}) == ["0", "1"]
    assert not any(k.startswith("text_decoder.") for k in stages[1]["model1"] if ".layers." not in k)
    assert _run("mm_to_hf", "--cfg.save_hf_dir", tmp_path / "hf", "--cfg.mm_dir", tmp_path / "ldt",
                "--cfg.hf_config.hf_dir", tiny_dir, *layouts) == 0
    _assert_same_weights(tiny_dir, tmp_path / "hf")
