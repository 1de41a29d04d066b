"""StepVideoConverter: release <-> MindSpeed-MM layout (per-head fused qkv / kv re-laid out, TP, PP), round trips."""

from __future__ import annotations

import torch
from safetensors.torch import load_file

from mm_convert import read_megatron
from mm_convert.cli import main
from mm_models_video.stepvideo.convert import MM_PIPELINE, merge_tp
from mm_models_video.stepvideo.flavors import get_flavor
from mm_models_video.stepvideo.transformer import StepVideoModel


def _release(tmp_path):
    torch.manual_seed(0)
    model = StepVideoModel(**get_flavor("tiny").predictor).eval()
    model.save_pretrained(tmp_path / "release")
    return model, tmp_path / "release"


def _convert(*argv) -> None:
    assert main(["StepVideoConverter", *map(str, argv)]) == 0


def test_hf_to_mm_lays_fused_heads_out_by_part_splits_tp_cuts_pp_and_comes_back(tmp_path):
    model, release = _release(tmp_path)
    _convert("hf_to_mm", "--cfg.source_path", release, "--cfg.target_path", tmp_path / "mm",
             "--cfg.target_parallel_config.tp_size", 2, "--cfg.target_parallel_config.pp_layers", "[1,1]")
    checkpoint = read_megatron(tmp_path / "mm", MM_PIPELINE)
    assert len(checkpoint.sources) == 2 and checkpoint.layouts["dit"] == [[1, 1]]
    heads, head_dim = model.config.num_attention_heads, model.config.attention_head_dim
    dim = heads * head_dim
    wqkv = model.transformer_blocks[1].attn1.wqkv.weight.detach().unflatten(0, (heads, 3, head_dim))
    wkv = model.transformer_blocks[1].attn2.wkv.weight.detach().unflatten(0, (heads, 2, head_dim))
    for rank, tp_source in enumerate(checkpoint.sources):
        own = slice(rank * heads // 2, (rank + 1) * heads // 2)  # this rank's heads, each part of them
        qkv = tp_source["transformer_blocks.1.attn1.proj_qkv.weight"]
        assert torch.equal(qkv, wqkv[own].transpose(0, 1).flatten(0, 2))
        kv = tp_source["transformer_blocks.1.attn2.proj_kv.weight"]
        assert torch.equal(kv, wkv[own].transpose(0, 1).flatten(0, 2))
        ffn_out = model.transformer_blocks[1].ff.net[2].weight
        assert torch.equal(tp_source["transformer_blocks.1.ff.net.2.weight"], ffn_out.detach().chunk(2, 1)[rank])
    whole = merge_tp(checkpoint.sources)
    assert torch.equal(whole["transformer_blocks.0.attn1.proj_qkv.weight"][:dim],
                       model.transformer_blocks[0].attn1.wqkv.weight.detach().unflatten(0, (heads, 3, -1))[:, 0]
                       .flatten(0, 1))

    _convert("resplit", "--cfg.source_path", tmp_path / "mm", "--cfg.target_path", tmp_path / "one")
    _convert("mm_to_hf", "--cfg.source_path", tmp_path / "one", "--cfg.ckpt_path", release,
             "--cfg.target_path", tmp_path / "back")
    original = load_file(release / "diffusion_pytorch_model.safetensors")
    back = load_file(tmp_path / "back" / "diffusion_pytorch_model.safetensors")
    assert original.keys() == back.keys() and all(torch.equal(original[k], back[k]) for k in original)

    loaded = StepVideoModel.from_pretrained(tmp_path / "back").eval()
    latents = torch.randn(1, 1, 4, 2, 2)
    text, clip = torch.randn(1, 5, 64), torch.randn(1, 3, 32)
    args = dict(hidden_states=latents, encoder_hidden_states=text, encoder_hidden_states_2=clip,
                encoder_attention_mask=torch.tensor([[1, 1, 1, 1, 1, 1, 1, 0]]), timestep=torch.tensor([0.3]))
    with torch.no_grad():
        assert torch.equal(_output(loaded, args), _output(model, args))


def _output(model, args):
    return model(**args)["x"]
