"""The seeds' OpenSoraPlan files load as they are; dynamic resolution plans each clip, a batch holds one shape."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from opensoraplan_testing import QUIET, osp_config

from mm_core.errors import ConfigError, DataError
from mm_core.runtime import create_runtime
from mm_core.testing import run_training
from mm_data.synthetic import make_moving_shapes
from mm_models_video.opensoraplan1_3.build import build_model
from mm_models_video.opensoraplan1_3.data import build_dataset, build_train_loader, parse_data
from mm_models_video.opensoraplan1_3.plugin import check_clips
from mm_models_video.opensoraplan1_3.schema import check_model

EXAMPLES = Path(__file__).parents[3] / "examples" / "opensoraplan1_3"


@pytest.mark.parametrize(
    ("task", "model", "data", "force"),
    [("t2v", "t2v/pretrain_t2v_model.json", "t2v/data_static_resolution.json", True),
     ("t2v", "t2v/pretrain_t2v_model.json", "t2v/data_dynamic_resolution.json", False),
     ("i2v", "i2v/pretrain_i2v_model.json", "i2v/data_i2v.json", False)],
    ids=["t2v-static", "t2v-dynamic", "i2v"],
)
def test_seed_files_load_unchanged(task, model, data, force) -> None:
    config = osp_config(files=(EXAMPLES / f"pretrain_{task}.yaml",),
                        sections={"model": EXAMPLES / model, "data": EXAMPLES / data})
    assert config.model.task == task and config.model.predictor.num_layers == 32 and config.model.flavor == "2b"
    check_model(config.model)
    parsed = parse_data(config)
    planner = parsed.planner
    assert (planner.num_frames, planner.force_resolution, planner.hw_stride) == (93, force, 32)
    assert planner.latent_frame_multiple == (4 if task == "t2v" else 1)  # model.json's max_cp_size
    assert parsed.data.dataloader_param.extra["group_data"] is True
    if task == "i2v":
        assert parsed.mask_type_ratio == {"i2v": 1} and parsed.cfg == 0.1
    if force:
        assert planner.size(720, 1280) == (352, 640)
    else:
        assert planner.size(720, 1280) == ((352, 608) if task == "t2v" else (352, 640))


def _clips(tmp_path: Path) -> Path:
    """Two generated datasets of different sizes under one data.txt."""
    lines = []
    for height, width in ((48, 64), (64, 48)):
        folder = make_moving_shapes(tmp_path / "videos", num_videos=4, num_frames=9, height=height, width=width)
        lines.append(f"{folder},{folder / 'data.json'}")
    (tmp_path / "data.txt").write_text("\n".join(lines))
    return tmp_path / "data.txt"


def test_dynamic_resolution_batches_hold_one_shape_and_reshuffle(tmp_path) -> None:
    data = {"dataset_param": {"basic_parameters": {"data_path": str(_clips(tmp_path))}, "preprocess_parameters": {
        "num_frames": 9, "min_num_frames": 5, "max_hxw": 2048, "hw_stride": 16, "force_resolution": False,
        "vae_scale_factor": [4, 8, 8], "use_aesthetic": True}},
        "dataloader_param": {"shuffle": True, "group_data": True}}
    (tmp_path / "data.json").write_text(json.dumps(data))
    config = osp_config("training.device=cpu", "training.micro_batch_size=2", sections={"data": tmp_path / "data.json"})
    loader = build_train_loader(config, create_runtime(config))
    assert sorted(set(loader.dataset.dataset.shapes())) == [(9, 32, 48), (9, 48, 32)]  # 2048 px, cut to 16s
    shapes, orders = [], []
    for epoch in (0, 1):
        loader.batch_sampler.set_epoch(epoch)
        batches = list(loader)
        shapes += [tuple(b["video"].shape[2:]) for b in batches]
        orders.append([b["index"].tolist() for b in batches])
    assert set(shapes) == {(9, 32, 48), (9, 48, 32)} and len(shapes) == 8
    assert orders[0] != orders[1]  # reshuffled every epoch


def test_drop_short_ratio_leaves_out_short_clips(tmp_path) -> None:
    """Clips planned shorter than num_frames are left out with probability drop_short_ratio (1: all of them)."""
    data = _clips(tmp_path)
    for ratio, count in ((0.0, 8), (1.0, 0)):
        config = osp_config("training.device=cpu", f"data.dataset_param.data_path={data}",
                            "data.dataset_param.num_frames=13", "data.dataset_param.min_num_frames=5",
                            f"data.dataset_param.drop_short_ratio={ratio}", "data.dataset_param.max_height=32",
                            "data.dataset_param.max_width=32", "data.dataset_param.hw_aspect_thr=3.0")
        if count:
            assert len(build_dataset(config, parse_data(config))) == count
        else:
            with pytest.raises(DataError, match="none of the 8 annotated clips fits the data section"):
                build_dataset(config, parse_data(config))


def test_wrong_settings_are_one_clear_error(tmp_path) -> None:
    with pytest.raises(ConfigError, match="unknown key 'data.dataset_param.max_hw'; did you mean .*max_hxw"):
        parse_data(osp_config("data.dataset_param.max_hw=5"))
    with pytest.raises(ConfigError, match="model.predictor.model_id must be 'videoditsparsei2v' for model.task 'i2v'"):
        build_model(osp_config("model.task=i2v", "model.predictor.model_id=videoditsparse").model)
    with pytest.raises(ConfigError, match="dataset_type 't2v' does not match model.task 'i2v'"):
        parse_data(osp_config("model.task=i2v", "data.dataset_param.dataset_type=t2v"))
    with pytest.raises(ConfigError, match=r"mask_type_ratio_dict_video must map mask types \(t2iv, i2v"):
        parse_data(osp_config("model.task=i2v", "data.dataset_param.mask_type_ratio_dict_video={'i2video': 1}"))
    with pytest.raises(ConfigError, match=r"vae_scale_factor must be \[4, 8, 8\]"):
        parse_data(osp_config("data.dataset_param.vae_scale_factor=[4,16,16]"))
    with pytest.raises(ConfigError, match="max_hxw is needed when force_resolution is false"):
        parse_data(osp_config("data.dataset_param.force_resolution=false"))
    model = build_model(osp_config().model)
    with pytest.raises(ConfigError, match=r"data.dataset_param: height 40 must be a multiple of 16 .*VAE stride"):
        check_clips(osp_config("data.dataset_param.max_height=40"), model)
    with pytest.raises(ConfigError, match="hw_stride 24 must be a multiple of 16"):
        check_clips(osp_config("data.dataset_param.force_resolution=false", "data.dataset_param.max_hxw=4096",
                               "data.dataset_param.hw_stride=24"), model)
    with pytest.raises(ConfigError, match=r"^model.use_dynamic_dpcp: mm does not switch the DP × CP split per step .*"
                       r"set parallel.cp.size to model.max_cp_size"):
        check_model(osp_config("model.use_dynamic_dpcp=true").model)


def test_dynamic_resolution_run_resumes_mid_epoch(tmp_path) -> None:
    """8 clips of 2 shapes, 2 a batch: 6 steps cross an epoch; resuming at step 3 continues the same batches."""
    data = {"dataset_param": {"data_path": str(_clips(tmp_path)), "num_frames": 9, "max_hxw": 2048, "hw_stride": 16,
                              "force_resolution": False},
            "dataloader_param": {"group_data": True}}
    (tmp_path / "data.json").write_text(json.dumps(data))
    common = [*QUIET, "training.device=cpu", "training.micro_batch_size=2", "training.global_batch_size=2",
              "training.train_iters=6", "training.lr_warmup_iters=0"]
    sections = {"data": tmp_path / "data.json"}
    straight = run_training(["opensoraplan1_3"], tmp_path / "straight", [*common, "training.save_interval=3",
                                                                          "training.keep_last=0"], sections=sections)
    shutil.copytree(tmp_path / "straight", tmp_path / "resumed")
    shutil.rmtree(tmp_path / "resumed" / "checkpoints" / "step_00000006")
    resumed = run_training(["opensoraplan1_3"], tmp_path / "resumed", [*common, "training.resume=true"],
                           sections=sections)
    assert resumed.losses == pytest.approx({s: straight.losses[s] for s in (4, 5, 6)}, rel=1e-5)


def test_ungrouped_clips_are_padded_and_masked(tmp_path) -> None:
    """Without group_data a batch mixes shapes: padded to the largest, its video_mask marks each clip's latents."""
    data = {"dataset_param": {"data_path": str(_clips(tmp_path)), "num_frames": 9, "max_hxw": 2048, "hw_stride": 16,
                              "force_resolution": False},
            "dataloader_param": {"group_data": False, "shuffle": False}}
    (tmp_path / "data.json").write_text(json.dumps(data))
    config = osp_config("training.device=cpu", "training.micro_batch_size=8", sections={"data": tmp_path / "data.json"})
    batch = next(iter(build_train_loader(config, create_runtime(config))))
    assert batch["video"].shape[1:] == (3, 9, 48, 48)
    assert batch["video_mask"].shape == (8, 3, 6, 6)
    assert batch["video_mask"].sum((1, 2, 3)).tolist() == [3 * 4 * 6] * 4 + [3 * 6 * 4] * 4
    result = run_training(["opensoraplan1_3"], tmp_path / "run", [
        *QUIET, "training.device=cpu", "training.micro_batch_size=2", "training.global_batch_size=2",
        "training.train_iters=2", "training.save_interval=0", "data.dataloader_param.shuffle=true"],
        sections={"data": tmp_path / "data.json"})
    assert all(torch.isfinite(torch.tensor(list(result.losses.values()))))


def test_padded_latents_predict_as_the_clip_alone() -> None:
    """The padding mask keeps padded tokens out of attention: a clip padded in time and space predicts its own
    region as it does alone. Dense layers: Skiparse's subsets follow the token order, which padding changes."""
    model = build_model(osp_config("model.predictor.sparse1d=false").model).eval()
    g = torch.Generator().manual_seed(0)
    alone = torch.randn(1, 8, 2, 4, 6, generator=g)
    padded = torch.zeros(1, 8, 3, 6, 8)
    padded[:, :, :2, :4, :6] = alone
    mask = torch.zeros(1, 3, 6, 8)
    mask[:, :2, :4, :6] = 1
    text = torch.randn(1, model.text_len, 64, generator=g)
    text_mask = torch.ones(1, model.text_len, dtype=torch.long)
    common = {"prompt_embeds": text, "prompt_mask": text_mask, "timesteps": torch.tensor([300])}
    with torch.no_grad():
        small = model(latents=alone, noise=torch.zeros_like(alone), **common)["pred"]
        big = model(latents=padded, noise=torch.zeros_like(padded), video_mask=mask, **common)
    torch.testing.assert_close(big["pred"][:, :, :2, :4, :6], small, rtol=1e-5, atol=1e-5)
    assert big["loss_mask"].sum() == 2 * 4 * 6
