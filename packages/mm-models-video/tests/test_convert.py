"""Wan21Converter: diffusers <-> MindSpeed-MM <-> Wan-AI layouts are lossless, and a trained checkpoint exports."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import WanTransformer3DModel
from safetensors import safe_open
from wan_testing import QUIET, SMALL_CLIPS

from mm_convert.cli import main
from mm_core.checkpoint import load_model_state
from mm_core.config import load_file, wrap
from mm_models_video.wan2_1.build import build_model
from mm_models_video.wan2_1.flavors import FLAVORS

I2V = {"image_dim": 1280, "added_kv_proj_dim": 128}  # Wan-AI I2V: CLIP ViT-H features


def _tiny(path, **extra) -> WanTransformer3DModel:
    torch.manual_seed(0)
    model = WanTransformer3DModel(**{**FLAVORS["tiny"].predictor, **extra}).eval()
    model.save_pretrained(path)
    return model


def _outputs(model: WanTransformer3DModel) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    latents = torch.randn(1, 4, 2, 8, 8, generator=generator)
    text = torch.randn(1, 6, 64, generator=generator)
    image = torch.randn(1, 5, 1280, generator=generator) if model.config.image_dim else None
    with torch.no_grad():
        return model(latents, torch.tensor([300]), text, encoder_hidden_states_image=image).sample


def _assert_same_model(a: torch.nn.Module, b: torch.nn.Module) -> None:
    """Bitwise equal weights; outputs equal up to kernel differences of memory alignment (about 1e-6)."""
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]) for k in sa)
    torch.testing.assert_close(_outputs(b), _outputs(a))


@pytest.mark.parametrize("extra", [{}, I2V], ids=["t2v", "i2v"])
def test_hf_to_mm_and_back_is_bitwise_equal(tmp_path, extra):
    model = _tiny(tmp_path / "hf", **extra)
    # The seeds' convert_ckpt.py syntax: --mode convert_to_mm / convert_to_hf, --pp_vpp_layers.
    assert main(["Wan21Converter", "--source_path", str(tmp_path / "hf"), "--target_path", str(tmp_path / "mm"),
                 "--mode", "convert_to_mm", "--pp_vpp_layers", "[[1,1],[1,1]]"]) == 0
    assert main(["Wan21Converter", "resplit", "--cfg.source_path", str(tmp_path / "mm"), "--cfg.target_path",
                 str(tmp_path / "mm"), "--cfg.pp_vpp_layers", "[[1,3]]"]) == 0
    stage = torch.load(tmp_path / "mm" / "release" / "mp_rank_00_001" / "model_optim_rng.pt", weights_only=False)
    assert "blocks.2.self_attn.proj_q.weight" in stage["model"] and "head.head.weight" in stage["model"]
    assert main(["Wan21Converter", "--source_path", str(tmp_path / "mm"), "--ckpt_path", str(tmp_path / "hf"),
                 "--target_path", str(tmp_path / "back"), "--mode", "convert_to_hf"]) == 0
    back = WanTransformer3DModel.from_pretrained(tmp_path / "back").eval()
    _assert_same_model(model, back)


@pytest.mark.parametrize("extra", [{}, I2V], ids=["t2v", "i2v"])
def test_original_wan_layout_round_trip(tmp_path, extra):
    model = _tiny(tmp_path / "hf", **extra)
    assert main(["Wan21Converter", "hf_to_original", "--cfg.source_path", str(tmp_path / "hf"),
                 "--cfg.target_path", str(tmp_path / "orig")]) == 0
    config = json.loads((tmp_path / "orig" / "config.json").read_text())
    assert (config["model_type"], config["dim"], config["num_heads"]) == ("i2v" if extra else "t2v", 128, 4)
    with safe_open(str(tmp_path / "orig" / "diffusion_pytorch_model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert {"blocks.0.self_attn.q.weight", "blocks.0.norm3.weight", "head.modulation",
            "text_embedding.0.weight"} <= keys
    assert main(["Wan21Converter", "original_to_hf", "--cfg.source_path", str(tmp_path / "orig"),
                 "--cfg.target_path", str(tmp_path / "back")]) == 0
    back = WanTransformer3DModel.from_pretrained(tmp_path / "back").eval()
    _assert_same_model(model, back)


def test_mismatched_checkpoint_is_one_error_listing_keys(tmp_path, capsys):
    _tiny(tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text(json.dumps({**config, "num_layers": 5, "ffn_dim": 128}))
    assert main(["Wan21Converter", "hf_to_mm", "--cfg.source_path", str(tmp_path / "hf"), "--cfg.target_path",
                 str(tmp_path / "mm"), "--cfg.pp_vpp_layers", "[3,3]"]) == 2
    assert "the dit layout [[3, 3]] holds 6 layers but" in capsys.readouterr().err
    assert main(["Wan21Converter", "hf_to_mm", "--cfg.source_path", str(tmp_path / "hf"), "--cfg.target_path",
                 str(tmp_path / "mm")]) == 0
    assert main(["Wan21Converter", "mm_to_hf", "--cfg.source_path", str(tmp_path / "mm"), "--cfg.ckpt_path",
                 str(tmp_path / "other"), "--cfg.target_path", str(tmp_path / "back")]) == 2
    err = capsys.readouterr().err
    assert "does not match a WanTransformer3DModel with the given config" in err
    assert "missing keys: blocks.4." in err and "shape mismatches: blocks.0.ffn.net.0.proj.bias (256,) != (128,)" in err
    assert not (tmp_path / "back").exists()


def test_export_of_a_training_checkpoint_loads_with_from_pretrained(mm_train, tmp_path):
    result = mm_train(["wan2_1"], *SMALL_CLIPS, *QUIET, "training.train_iters=2", "training.save_interval=2",
                      "training.micro_batch_size=1", "training.global_batch_size=1")
    assert main(["Wan21Converter", "export", "--cfg.source_path", str(result.output_dir), "--cfg.target_path",
                 str(tmp_path / "exported")]) == 0
    exported = WanTransformer3DModel.from_pretrained(tmp_path / "exported", subfolder="transformer").eval()
    trained = build_model(wrap(load_file(result.checkpoint / "config.yaml")).model)
    untrained = _outputs(trained.predictor.eval())
    load_model_state(result.checkpoint, trained)
    expected = _outputs(trained.predictor.eval())
    assert not torch.equal(expected, untrained)
    torch.testing.assert_close(_outputs(exported), expected)
