"""mm-convert OpenSoraPlanConverter: vae_convert, hf_to_mm (TP splits, PP/VPP cuts), resplit, mm_to_hf, export."""

from __future__ import annotations

import pytest
import torch

from mm_convert.cli import run
from mm_convert.errors import ConvertError
from mm_models_video.opensoraplan1_3.flavors import get_flavor
from mm_models_video.opensoraplan1_3.inpaint import OpenSoraInpaint
from mm_models_video.opensoraplan1_3.transformer import OpenSoraT2V
from mm_models_video.opensoraplan1_3.wfvae import WFVAEModel

TINY = get_flavor("tiny").predictor


def _stage(folder, tp: int, pp: int | None) -> dict:
    name = f"mp_rank_{tp:02d}" if pp is None else f"mp_rank_{tp:02d}_{pp:03d}"
    return torch.load(folder / "release" / name / "model_optim_rng.pt", weights_only=False)


def test_vae_convert_unwraps_the_released_checkpoint(tmp_path) -> None:
    vae = WFVAEModel(**get_flavor("tiny").ae)
    torch.save({"ema_state_dict": {f"module.{k}": v for k, v in vae.state_dict().items()}}, tmp_path / "merged.ckpt")
    out = run(["OpenSoraPlanConverter", "vae_convert", "--version", "v1.3", "--cfg.source_path",
               str(tmp_path / "merged.ckpt"), "--cfg.target_path", str(tmp_path / "vae.pt")])
    assert "vae.pt" in out
    state = torch.load(tmp_path / "vae.pt", weights_only=True)
    assert state.keys() == vae.state_dict().keys()
    with pytest.raises(ConvertError, match="--version 'v1.2' is not supported"):
        run(["OpenSoraPlanConverter", "vae_convert", "--version", "v1.2", "--cfg.source_path", "x", "--cfg.target_path",
             "y"])


@pytest.mark.parametrize("i2v", [False, True], ids=["t2v", "i2v"])
def test_hf_to_mm_splits_and_cuts_and_comes_back(tmp_path, i2v) -> None:
    torch.manual_seed(0)
    model = OpenSoraInpaint(**TINY) if i2v else OpenSoraT2V(**TINY)
    model.save_pretrained(tmp_path / "release")
    mm = tmp_path / "mm"
    run(["OpenSoraPlanConverter", "hf_to_mm", "--version", "v1.3", "--cfg.source_path", str(tmp_path / "release"),
         "--cfg.target_path", str(mm), "--cfg.target_parallel_config.tp_size", "2",
         "--cfg.target_parallel_config.pp_layers", "[[1,2],[2,1]]"])
    first = _stage(mm, 1, 0)
    assert {"model0", "model1"} <= first.keys()  # two virtual chunks
    chunk = first["model0"]
    assert {"videodit_sparse_blocks.0.self_atten.proj_q.weight", "caption_projection.linear_1.weight"} <= chunk.keys()
    assert ("pos_embed_mask.0.proj.weight" in chunk) == i2v  # the I2V branches stay with the embedders
    q = model.state_dict()["transformer_blocks.0.attn1.to_q.weight"]
    torch.testing.assert_close(chunk["videodit_sparse_blocks.0.self_atten.proj_q.weight"], q.chunk(2, 0)[1])
    out_proj = model.state_dict()["transformer_blocks.0.attn2.to_out.0.weight"]
    cross_out = chunk["videodit_sparse_blocks.0.cross_atten.proj_out.weight"]
    torch.testing.assert_close(cross_out, out_proj.chunk(2, 1)[1])
    assert "proj_out.weight" in _stage(mm, 0, 1)["model1"]  # the head on the last slot
    run(["OpenSoraPlanConverter", "resplit", "--cfg.source_path", str(mm), "--cfg.target_path", str(tmp_path / "one")])
    assert len(_stage(tmp_path / "one", 0, None)["model"]) == len(model.state_dict())
    run(["OpenSoraPlanConverter", "mm_to_hf", "--cfg.source_path", str(mm), "--cfg.ckpt_path",
         str(tmp_path / "release"), "--cfg.target_path", str(tmp_path / "back")])
    back = type(model).from_pretrained(tmp_path / "back")
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(back.state_dict()[name], tensor, rtol=0, atol=0)


def test_hf_to_mm_names_a_layer_count_that_does_not_fit(tmp_path) -> None:
    OpenSoraT2V(**TINY).save_pretrained(tmp_path / "release")
    with pytest.raises(ConvertError, match=r"holds 4 layers but .* has 6"):
        run(["OpenSoraPlanConverter", "hf_to_mm", "--cfg.source_path", str(tmp_path / "release"),
             "--cfg.target_path", str(tmp_path / "mm"), "--cfg.target_parallel_config.pp_layers", "[2,2]"])
