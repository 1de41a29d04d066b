"""StepVideoConverter: release <-> MindSpeed-MM layout (per-head fused qkv / kv re-laid out, TP, PP), round trips."""

from __future__ import annotations

import torch
from safetensors.torch import load_file
from stepvideo_testing import QUIET, stepvideo_config

from mm_convert import read_megatron
from mm_convert.cli import main
from mm_core.checkpoint import load_model_state
from mm_core.config import load_file as load_config
from mm_core.config import wrap
from mm_models_video.stepvideo.build import build_model
from mm_models_video.stepvideo.convert import MM_PIPELINE, _split_rule, merge_tp
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
    whole = merge_tp(checkpoint.sources, _split_rule)
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


def _forward_args():
    torch.manual_seed(1)
    latents = torch.randn(1, 3, 4, 2, 2)
    text, clip = torch.randn(1, 5, 64), torch.randn(1, 3, 32)
    return dict(hidden_states=latents, encoder_hidden_states=text, encoder_hidden_states_2=clip,
                encoder_attention_mask=torch.tensor([[1, 1, 1, 1, 1, 1, 1, 0]]), timestep=torch.tensor([0.7]))


def test_export_of_a_training_checkpoint_loads_into_the_plugin(mm_train, tmp_path):
    result = mm_train(["stepvideo"], *QUIET, "training.train_iters=1", "training.save_interval=1",
                      "training.micro_batch_size=1", "training.global_batch_size=1", output_dir=tmp_path / "run")
    _convert("export", "--cfg.source_path", result.output_dir, "--cfg.target_path", tmp_path / "exported")
    trained = build_model(wrap(load_config(result.checkpoint / "config.yaml")).model)
    args = _forward_args()
    with torch.no_grad():
        untrained = _output(trained.predictor.eval(), args)
        load_model_state(result.checkpoint, trained)
        expected = _output(trained.predictor.eval(), args)
        assert not torch.equal(expected, untrained)
        # The release's folder layout: the plugin builds its transformer from it, and from_pretrained loads it.
        plugin = build_model(stepvideo_config(f"model.predictor.from_pretrained={tmp_path / 'exported'}").model)
        assert torch.equal(_output(plugin.predictor.eval(), args), expected)
        assert torch.equal(_output(StepVideoModel.from_pretrained(tmp_path / "exported").eval(), args), expected)
