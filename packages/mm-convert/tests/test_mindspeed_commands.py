"""MindSpeed-MM's SoraModelConverter commands (mm_to_dcp, layerzero_to_mm, lora_hf_to_mm, merge_lora_to_base) and
its FSDP2 (DCP) checkpoints, as its READMEs write the command lines, on a tiny Wan2.1 transformer."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import types
import warnings

import pytest
import torch
import torch.distributed.checkpoint as dcp
from diffusers import WanTransformer3DModel
from safetensors.torch import save_file

from mm_convert import RuleSet, TensorSource, read_megatron, read_safetensors, rename
from mm_convert.cli import main
from mm_convert.lora_weights import convert_lora, lora_split_rule, merge_lora
from mm_convert.rules import Rule
from mm_convert.tp_split import merge_tp, split_tp
from mm_models_video.opensoraplan1_3.convert import RELEASE_TO_MM
from mm_models_video.opensoraplan1_3.flavors import get_flavor
from mm_models_video.opensoraplan1_3.transformer import OpenSoraT2V
from mm_models_video.stepvideo.flavors import get_flavor as stepvideo_flavor
from mm_models_video.stepvideo.transformer import StepVideoModel
from mm_models_video.wan2_1.convert import DIFFUSERS_TO_MM, MM_PIPELINE
from mm_models_video.wan2_1.flavors import FLAVORS

WAN = "WanConverter"  # MindSpeed-MM's name of Wan21Converter


@pytest.fixture
def hf(tmp_path):
    """A tiny diffusers Wan2.1 transformer folder (2 blocks)."""
    torch.manual_seed(0)
    WanTransformer3DModel(**{**FLAVORS["tiny"].predictor, "num_layers": 2}).save_pretrained(tmp_path / "hf")
    return tmp_path / "hf"


def _mm_names(hf) -> dict[str, torch.Tensor]:
    """The transformer's tensors under MindSpeed-MM's names (what its Megatron and FSDP2 checkpoints hold)."""
    source = DIFFUSERS_TO_MM.to_mm(read_safetensors(hf))
    return {key: source[key] for key in source}


def _assert_equal(source, expected: dict[str, torch.Tensor]) -> None:
    assert sorted(source) == sorted(expected)
    for key, value in expected.items():
        assert source[key].dtype == value.dtype and torch.equal(source[key], value), key


def _run(*argv: str) -> None:
    assert main([str(a) for a in argv]) == 0


def _dcp_model(folder) -> dict[str, torch.Tensor]:
    reader = dcp.FileSystemReader(str(folder))
    metadata = reader.read_metadata().state_dict_metadata
    state = {"model": {k[6:]: torch.empty(m.size, dtype=m.properties.dtype) for k, m in metadata.items()
                       if k.startswith("model.")}, "checkpoint_version": 0.0}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(state, storage_reader=reader, no_dist=True)
    return state


def test_mm_to_dcp_in_place_as_the_readme_writes_it_and_mm_to_hf_of_fsdp2_checkpoints(hf, tmp_path):
    # examples/wan2.2/README.md: hf_to_mm then mm_to_dcp, both into the diffusers folder itself.
    _run(WAN, "hf_to_mm", "--cfg.source_path", hf, "--cfg.target_path", hf, "--cfg.target_parallel_config.pp_layers",
         "[1,1]")
    _run(WAN, "mm_to_dcp", "--cfg.source_path", hf, "--cfg.target_path", hf)
    assert (hf / "latest_checkpointed_iteration.txt").read_text() == "release"
    assert sorted(p.name for p in (hf / "release").iterdir() if p.is_dir()) == ["mp_rank_00_000", "mp_rank_00_001"]
    state = _dcp_model(hf / "release")
    assert state["checkpoint_version"] == 3.0
    _assert_equal(TensorSource({k: v.to("meta") for k, v in state["model"].items()}, state["model"].__getitem__, ""),
                  _mm_names(hf))
    # A FSDP2 training's save: iter_0000010/ next to latest_checkpointed_iteration.txt, back to diffusers.
    save = tmp_path / "save"
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.save({"model": _mm_names(hf), "iteration": 10}, checkpoint_id=str(save / "iter_0000010"), no_dist=True)
    (save / "latest_checkpointed_iteration.txt").write_text("10")
    _run(WAN, "mm_to_hf", "--cfg.source_path", save, "--cfg.hf_dir", hf, "--cfg.target_path", tmp_path / "back")
    original = WanTransformer3DModel.from_pretrained(hf).state_dict()
    back = WanTransformer3DModel.from_pretrained(tmp_path / "back").state_dict()
    assert all(torch.equal(original[k], back[k]) for k in original) and original.keys() == back.keys()


@dataclasses.dataclass
class ShardFlattenInfo:
    """MindSpeed's class of the same name (mindspeed/core/distributed/layerzero/state/fqn.py)."""

    in_shard: bool
    numel: int
    intra_param_start_idx: int
    intra_param_end_idx: int
    shape: torch.Size
    tensor_model_parallel: bool
    partition_dim: int
    partition_stride: int


def _write_layerzero(folder, tensors: dict[str, torch.Tensor], ranks: int = 2) -> None:
    """LayerZero shards as MindSpeed's mga_checkpoint.save_checkpoint writes them: model_<rank>.pt per rank, the
    EMA weights (here: the model's doubled) beside the model's."""
    name = "mindspeed.core.distributed.layerzero.state.fqn"
    chain = [name.rsplit(".", n)[0] for n in range(name.count("."), -1, -1)]  # pickle imports the parents too
    for part in chain:
        sys.modules[part] = types.ModuleType(part)
    sys.modules[name].ShardFlattenInfo = ShardFlattenInfo
    ShardFlattenInfo.__module__ = name
    try:
        infos, states = {}, [{"model": {}, "ema_model": {}} for _ in range(ranks)]
        for n, (name, tensor) in enumerate(tensors.items()):
            wrapped = "_zero3_wrapped_module.predictor." + name.replace(".", "._zero3_wrapped_module.", 1)
            if n:  # the first parameter is one LayerZero does not manage: whole on every rank, no shard info
                infos["predictor." + name] = ShardFlattenInfo(True, tensor.numel(), 0, 0, tensor.shape, False, -1, 1)
            for key, value in (("model", tensor), ("ema_model", 2 * tensor)):
                flat = value.reshape(-1)
                cut = flat.numel() // 3  # uneven pieces, as a flat parameter's shards are
                pieces = [value] * ranks if not n else (flat[:cut], flat[cut:]) if ranks == 2 else (flat,)
                for state, piece in zip(states, pieces):
                    state[key][wrapped] = piece.clone()
        folder.mkdir(parents=True)
        args = argparse.Namespace(num_layers=2, pipeline_model_parallel_size=1)
        for rank, state in enumerate(states):
            parallel = {"tp_rank": 0, "pp_rank": 0, "dp_rank": rank, "tp_degree": 1, "pp_degree": 1,
                        "dp_degree": ranks, "global_rank": rank}
            torch.save({"args": args, "checkpoint_version": 3.0, "iteration": 5, **state, "shard_state_dict": infos,
                        "parallel_state": parallel}, folder / f"model_{rank}.pt")
    finally:
        for part in chain:
            del sys.modules[part]


def test_layerzero_to_mm_joins_the_ranks_shards(hf, tmp_path):
    tensors = _mm_names(hf)
    _write_layerzero(tmp_path / "save" / "iter_0000005", tensors)
    _run(WAN, "layerzero_to_mm", "--cfg.source_path", tmp_path / "save", "--cfg.target_path", tmp_path / "mm")
    checkpoint = read_megatron(tmp_path / "mm", MM_PIPELINE)
    assert checkpoint.layouts == {"dit": [[2]]}
    _assert_equal(checkpoint.sources[0], tensors)
    _run(WAN, "layerzero_to_mm", "--cfg.source_path", tmp_path / "save", "--cfg.target_path", tmp_path / "ema",
         "--cfg.ema_model", "true", "--cfg.iteration", "5", "--cfg.target_parallel_config.pp_layers", "[1,1]")
    _assert_equal(read_megatron(tmp_path / "ema", MM_PIPELINE).sources[0], {k: 2 * v for k, v in tensors.items()})


def _lora(module_names: list[str], rank: int = 4) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    out = {}
    for name, (rows, cols) in module_names:
        out[f"{name}.lora_A.weight"] = torch.randn(rank, cols)
        out[f"{name}.lora_B.weight"] = torch.randn(rows, rank)
    return out


def test_lora_hf_to_mm_and_merge_lora_to_base_are_w_plus_scaling_b_at_a(hf, tmp_path):
    base = _mm_names(hf)
    _run(WAN, "hf_to_mm", "--cfg.source_path", hf, "--cfg.target_path", tmp_path / "mm")
    width, ffn = base["blocks.0.self_attn.proj_q.weight"].shape[0], base["blocks.0.ffn.0.weight"].shape[0]
    # A DiffSynth / ComfyUI LoRA of Wan2.1: Wan-AI's module names under diffusion_model.
    shapes = {"self_attn.q": (width, width), "ffn.0": (ffn, width)}
    hf_lora = _lora([(f"diffusion_model.blocks.{i}.{m}", s) for i in range(2) for m, s in shapes.items()])
    (tmp_path / "lora").mkdir()
    save_file(hf_lora, str(tmp_path / "lora" / "lora.safetensors"))
    _run(WAN, "lora_hf_to_mm", "--cfg.source_path", tmp_path / "lora", "--cfg.target_path", tmp_path / "lora_mm")
    lora_mm = read_megatron(tmp_path / "lora_mm", MM_PIPELINE).sources[0]
    assert sorted(lora_mm)[:2] == ["blocks.0.ffn.0.lora_A.default.weight", "blocks.0.ffn.0.lora_B.default.weight"]
    assert torch.equal(lora_mm["blocks.1.self_attn.proj_q.lora_B.default.weight"],
                       hf_lora["diffusion_model.blocks.1.self_attn.q.lora_B.weight"])
    # examples/wan2.1/README.md: --lora_alpha and --lora_rank without --cfg.; cut into two stages on the way.
    _run(WAN, "merge_lora_to_base", "--cfg.source_path", tmp_path / "mm", "--cfg.target_path", tmp_path / "merged",
         "--cfg.lora_path", tmp_path / "lora_mm", "--lora_alpha", "64", "--lora_rank", "32",
         "--cfg.target_parallel_config.pp_layers", "[1,1]")
    merged = read_megatron(tmp_path / "merged", MM_PIPELINE)
    assert merged.layouts == {"dit": [[1, 1]]}
    expected = dict(base)
    for i in range(2):
        for theirs, ours in (("self_attn.q", "self_attn.proj_q"), ("ffn.0", "ffn.0")):
            a, b = (hf_lora[f"diffusion_model.blocks.{i}.{theirs}.lora_{p}.weight"] for p in "AB")
            key = f"blocks.{i}.{ours}.weight"
            expected[key] = (base[key].float() + 2.0 * (b @ a)).to(base[key].dtype)
    _assert_equal(merged.sources[0], expected)
    # The LoRA file itself, in diffusers' names this time, merges alike.
    diffusers_lora = {k.replace("diffusion_model.", "transformer.").replace("self_attn.q", "attn1.to_q")
                      .replace("ffn.0", "ffn.net.0.proj"): v for k, v in hf_lora.items()}
    save_file(diffusers_lora, str(tmp_path / "diffusers_lora.safetensors"))
    _run(WAN, "merge_lora_to_base", "--cfg.source_path", tmp_path / "mm", "--cfg.target_path", tmp_path / "m2",
         "--cfg.lora_path", tmp_path / "diffusers_lora.safetensors", "--lora_alpha", "64", "--lora_rank", "32")
    _assert_equal(read_megatron(tmp_path / "m2", MM_PIPELINE).sources[0], expected)


def test_opensoraplan_tp_checkpoint_to_dcp_and_a_lora_merged_into_tp_ranks(tmp_path):
    torch.manual_seed(0)
    OpenSoraT2V(**{**get_flavor("tiny").predictor, "num_layers": 2}).save_pretrained(tmp_path / "release")
    release = read_safetensors(tmp_path / "release")
    osp = ["OpenSoraPlanConverter", "--version", "v1.3"]
    _run(*osp, "hf_to_mm", "--cfg.source_path", tmp_path / "release", "--cfg.target_path", tmp_path / "mm",
         "--cfg.target_parallel_config.tp_size", "2")
    _run(*osp, "mm_to_dcp", "--cfg.source_path", tmp_path / "mm", "--cfg.target_path", tmp_path / "dcp")
    whole = RELEASE_TO_MM.to_mm(release)
    _assert_equal(_toy(_dcp_model(tmp_path / "dcp" / "release")["model"]), {k: whole[k] for k in whole})
    # A LoRA in the release's names of a column-parallel (to_q) and a row-parallel (to_out.0) linear, merged into
    # the FSDP2 checkpoint and cut for TP 2 again.
    q, out = "transformer_blocks.0.attn1.to_q", "transformer_blocks.1.attn2.to_out.0"
    lora = _lora([(name, tuple(release.meta(f"{name}.weight").shape)) for name in (q, out)])
    save_file(lora, str(tmp_path / "lora.safetensors"))
    _run(*osp, "merge_lora_to_base", "--cfg.source_path", tmp_path / "dcp", "--cfg.lora_path",
         tmp_path / "lora.safetensors", "--cfg.target_path", tmp_path / "merged", "--lora_alpha", "8", "--lora_rank",
         "4", "--cfg.target_parallel_config.tp_size", "2")
    _run(*osp, "mm_to_hf", "--cfg.source_path", tmp_path / "merged", "--cfg.ckpt_path", tmp_path / "release",
         "--cfg.target_path", tmp_path / "back")
    expected = {k: release[k] for k in release}
    for name in (q, out):
        weight = expected[f"{name}.weight"]
        expected[f"{name}.weight"] = weight + 2.0 * (lora[f"{name}.lora_B.weight"] @ lora[f"{name}.lora_A.weight"])
    _assert_equal(read_safetensors(tmp_path / "back"), expected)


def test_stepvideo_lora_of_the_fused_per_head_qkv_merges_in_mindspeed_mm_s_layout(tmp_path):
    # The release's attn1.wqkv rows are per head; MindSpeed-MM's proj_qkv per part, split by TP: B follows the rows.
    torch.manual_seed(0)
    StepVideoModel(**stepvideo_flavor("tiny").predictor).save_pretrained(tmp_path / "release")
    release = read_safetensors(tmp_path / "release")
    step = ["StepVideoConverter"]
    _run(*step, "hf_to_mm", "--cfg.source_path", tmp_path / "release", "--cfg.target_path", tmp_path / "mm",
         "--cfg.target_parallel_config.tp_size", "2")
    qkv, kv = "transformer_blocks.0.attn1.wqkv", "transformer_blocks.1.attn2.wkv"
    lora = _lora([(name, tuple(release.meta(f"{name}.weight").shape)) for name in (qkv, kv)])
    save_file(lora, str(tmp_path / "lora.safetensors"))
    _run(*step, "lora_hf_to_mm", "--cfg.source_path", tmp_path / "lora.safetensors", "--cfg.target_path",
         tmp_path / "lora_mm", "--cfg.hf_dir", tmp_path / "release", "--cfg.target_parallel_config.tp_size", "2")
    _run(*step, "merge_lora_to_base", "--cfg.source_path", tmp_path / "mm", "--cfg.lora_path", tmp_path / "lora_mm",
         "--cfg.target_path", tmp_path / "merged", "--lora_alpha", "4", "--lora_rank", "4",
         "--cfg.target_parallel_config.tp_size", "2")
    _run(*step, "mm_to_hf", "--cfg.source_path", tmp_path / "merged", "--cfg.ckpt_path", tmp_path / "release",
         "--cfg.target_path", tmp_path / "back")
    back = read_safetensors(tmp_path / "back")
    for name in (qkv, kv):
        update = lora[f"{name}.lora_B.weight"] @ lora[f"{name}.lora_A.weight"]
        torch.testing.assert_close(back[f"{name}.weight"], release[f"{name}.weight"] + update)
    assert torch.equal(back["transformer_blocks.0.attn1.wo.weight"], release["transformer_blocks.0.attn1.wo.weight"])


def _toy(tensors: dict[str, torch.Tensor]) -> TensorSource:
    return TensorSource({k: v.to("meta") for k, v in tensors.items()}, tensors.__getitem__, "toy")


def test_a_rule_that_reorders_rows_reorders_lora_b_and_tp_splits_the_pair_as_its_linear():
    torch.manual_seed(2)
    # The release stores a fused weight with rows reversed (as Step-Video's per-head q/k/v differ in order).
    flip = RuleSet([Rule(("w",), "fused", lambda ts: ts[0].flip(0), lambda t: [t.flip(0)]), rename("o", "out")])
    weight, out, a, b, a2, b2 = (torch.randn(*s) for s in ((6, 4), (4, 6), (2, 4), (6, 2), (2, 6), (4, 2)))
    lora = convert_lora(_toy({"w.lora_A.weight": a, "w.lora_B.weight": b, "o.lora_A.weight": a2,
                              "o.lora_B.weight": b2}), [flip])
    base = _toy({"fused.weight": weight.flip(0), "out.weight": out})
    merged = merge_lora(base, lora, 0.5)
    torch.testing.assert_close(merged["fused.weight"], (weight + 0.5 * b @ a).flip(0))
    # Column-parallel fused rows, row-parallel out: each rank's B @ A is its piece of the whole update.
    rule = lora_split_rule(lambda key: (0, 1) if key.startswith("fused") else (1, 1) if key == "out.weight" else None)
    ranks = split_tp(lora, 2, rule)
    for r, rank in enumerate(ranks):
        piece = rank["fused.lora_B.default.weight"] @ rank["fused.lora_A.default.weight"]
        torch.testing.assert_close(piece, (b @ a).flip(0).chunk(2, 0)[r])
        assert torch.equal(rank["out.lora_A.default.weight"], a2.chunk(2, 1)[r])
    _assert_equal(merge_tp(ranks, rule), {k: lora[k] for k in lora})


def test_print_config_of_a_readme_command_line_is_a_config_file_that_gives_it(tmp_path, capsys):
    assert main([WAN, "merge_lora_to_base", "--cfg.source_path", "base", "--cfg.target_path", "merged",
                 "--cfg.lora_path", "lora", "--lora_alpha", "64", "--lora_rank", "64", "--print_config"]) == 0
    printed = capsys.readouterr().out
    assert "lora_alpha: 64.0" in printed and "lora_rank: 64" in printed and "lora_path: lora" in printed
    (tmp_path / "merge.yaml").write_text(printed)
    assert main([WAN, "merge_lora_to_base", "--config", str(tmp_path / "merge.yaml"), "--print_config"]) == 0
    assert capsys.readouterr().out == printed


@pytest.mark.parametrize(("argv", "message"), [
    (["mm_to_dcp", "--cfg.source_path", "{tmp}/nope", "--cfg.target_path", "{tmp}/out"],
     "--cfg.source_path {tmp}/nope is not a directory"),
    (["mm_to_dcp", "--cfg.source_path", "{tmp}", "--cfg.target_path", "{tmp}/out"],
     "is neither a MindSpeed-MM checkpoint (release/ or iter_*/ with mp_rank_*) nor an FSDP2 one"),
    (["layerzero_to_mm", "--cfg.source_path", "{tmp}/hf", "--cfg.target_path", "{tmp}/out"],
     "is not a LayerZero checkpoint: no iter_XXXXXXX/ and no model_<rank>.pt"),
    (["lora_hf_to_mm", "--cfg.source_path", "{tmp}/hf", "--cfg.target_path", "{tmp}/out"],
     "keys are not LoRA weights"),
    (["merge_lora_to_base", "--cfg.source_path", "{tmp}/mm", "--cfg.target_path", "{tmp}/out", "--cfg.lora_path",
      "{tmp}/mm", "--lora_rank", "0"], "--lora_rank must be at least 1, got 0"),
    (["layerzero_to_mm", "--cfg.source_path", "{tmp}/save", "--cfg.target_path", "{tmp}/out",
      "--cfg.target_parallel_config.tp_size", "2"], "Wan21Converter has no tensor parallelism"),
])
def test_bad_input_is_one_error_line(hf, tmp_path, capsys, argv, message):
    _write_layerzero(tmp_path / "save" / "iter_0000005", _mm_names(hf), ranks=1)
    (tmp_path / "mm").mkdir()
    assert main([WAN, *(a.format(tmp=tmp_path) for a in argv)]) == 2
    err = capsys.readouterr().err
    assert message.format(tmp=tmp_path) in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()
