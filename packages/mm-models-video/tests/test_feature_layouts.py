"""``mm extract`` writes MindSpeed-MM's feature layout (``extract.layout=mindspeed``) as its feature extraction does,
and training from it gives the loss training from mm's own layout gives, for wan2_1 and stepvideo."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from stepvideo_testing import spawn_extraction, stepvideo_config
from wan_testing import wan_config

from mm_core.errors import ConfigError
from mm_core.runtime import create_runtime
from mm_data.features import MindSpeedFeatureDataset
from mm_data.synthetic import make_moving_shapes
from mm_models_video.stepvideo import plugin as step_plugin
from mm_models_video.stepvideo.build import build_model as build_stepvideo
from mm_models_video.stepvideo.data import build_train_loader as stepvideo_loader
from mm_models_video.stepvideo.extract import extract_features as extract_stepvideo
from mm_models_video.synthetic import cache_dir
from mm_models_video.wan2_1 import plugin as wan_plugin
from mm_models_video.wan2_1.build import build_model as build_wan
from mm_models_video.wan2_1.data import build_train_loader as wan_loader
from mm_models_video.wan2_1.extract import extract_features as extract_wan

BATCH = ["training.device=cpu", "training.micro_batch_size=2", "training.global_batch_size=2"]
CLIP_LEN = 64
# data.json's tokenizer_config.model_max_length, which MindSpeed-MM pads extracted prompts to (the tiny flavor's is 64)
TEXT_LEN = 80


def _clips(num_frames: int) -> list[str]:
    folder = make_moving_shapes(cache_dir() / "datasets", num_videos=4, num_frames=num_frames, height=32, width=32,
                                fps=8)
    return [f"data.dataset_param.data_path={folder / 'data.json'}", f"data.dataset_param.data_folder={folder}"]


def _extract(make_config, extract, out: Path, layout: str, *overrides: str) -> Path:
    config = make_config(f"extract.output_dir={out}", f"extract.layout={layout}", "training.device=cpu", *overrides,
                         task="extract")
    runtime = create_runtime(config)
    try:
        assert extract(config, runtime).startswith(f"extracted 4 samples (0 skipped on rank 0) into {out}")
    finally:
        runtime.close()
    return out / "data.json"


def _losses(make_config, loader, build, plugin, stores: list[Path], noise_shape: tuple, *overrides: str) -> list:
    """The first batch's loss from each store, at the same noise and timesteps."""
    fixed = {"noise": torch.randn(2, *noise_shape, generator=torch.Generator().manual_seed(0)),
             "timestep_indices": torch.tensor([100, 700])}
    model, losses = None, []
    for store in stores:
        config = make_config(*BATCH, *overrides, sections={"data": store})
        runtime = create_runtime(config)
        batch = next(iter(loader(config, runtime)))
        model = model or build(config.model)
        with torch.no_grad():
            losses.append(plugin.loss_func(model(**plugin.model_inputs(batch), **fixed), batch, runtime)[0])
    return losses


def _lines(store: Path) -> list[dict]:
    return [json.loads(line) for line in (store.parent / "data.jsonl").read_text().splitlines()]


def test_wan2_1_writes_mindspeed_layout_that_trains_as_its_own(tmp_path) -> None:
    clips = [*_clips(9), f'data.dataset_param.tokenizer_config={{"model_max_length": {TEXT_LEN}}}']
    ours = _extract(wan_config, extract_wan, tmp_path / "mm", "mm", *clips)
    theirs = _extract(wan_config, extract_wan, tmp_path / "mindspeed", "mindspeed", *clips)
    lines = _lines(theirs)
    assert [line["file"] for line in lines] == [f"features/video{n:06d}_mp4.pt" for n in range(4)]
    assert [line["index"] for line in lines] == [0, 1, 2, 3] and isinstance(lines[0]["cap"], str)
    assert not list((tmp_path / "mindspeed").glob("rank_*")) and not list((tmp_path / "mindspeed").rglob(".*.tmp"))
    sample = torch.load(tmp_path / "mindspeed" / lines[0]["file"], weights_only=True)
    assert sorted(sample) == ["prompt_ids", "prompt_mask", "video"]
    assert sample["video"].shape == (4, 3, 4, 4) and sample["video"].dtype == torch.float32
    assert sample["prompt_ids"].shape[:2] == (1, TEXT_LEN) and sample["prompt_mask"].shape == (1, TEXT_LEN)
    length = int(sample["prompt_mask"].sum())
    assert 0 < length < TEXT_LEN and not sample["prompt_ids"][0, length:].any()
    data = json.loads(theirs.read_text())["dataset_param"]["basic_parameters"]
    assert data == {"data_path": str(tmp_path / "mindspeed" / "data.jsonl"), "data_folder": str(tmp_path / "mindspeed")}
    from_ours, from_theirs = _losses(wan_config, wan_loader, build_wan, wan_plugin, [ours, theirs], (4, 3, 4, 4))
    torch.testing.assert_close(from_theirs, from_ours, rtol=0, atol=0)


@pytest.mark.slow
def test_wan2_1_i2v_mindspeed_layout_holds_its_clip_tokens_and_condition_and_trains_as_its_own(tmp_path) -> None:
    clips = [*_clips(9), "model.task=i2v"]
    ours = _extract(wan_config, extract_wan, tmp_path / "mm", "mm", *clips)
    theirs = _extract(wan_config, extract_wan, tmp_path / "mindspeed", "mindspeed", *clips)
    sample = torch.load(tmp_path / "mindspeed" / _lines(theirs)[0]["file"], weights_only=True)
    assert sorted(sample) == ["i2v_clip_feature", "i2v_vae_feature", "prompt_ids", "prompt_mask", "video"]
    assert sample["i2v_clip_feature"].shape == (17, 32) and sample["i2v_vae_feature"].shape == (8, 3, 4, 4)
    from_ours, from_theirs = _losses(wan_config, wan_loader, build_wan, wan_plugin, [ours, theirs], (4, 3, 4, 4),
                                     "model.task=i2v")
    torch.testing.assert_close(from_theirs, from_ours, rtol=0, atol=0)


# TI2V's store holds all of T2V's and the condition: the fast suite runs it alone.
@pytest.mark.parametrize("task", [pytest.param("t2v", marks=pytest.mark.slow), "i2v"])
def test_stepvideo_writes_mindspeed_layout_that_trains_as_its_own(tmp_path, task) -> None:
    # hunyuan_clip pads captions to CLIP_LEN tokens: its padded tokens are in both stores, and attended to.
    clips = [*_clips(17), f"model.task={task}", f"model.tokenizer.clip.model_max_length={CLIP_LEN}"]
    ours = _extract(stepvideo_config, extract_stepvideo, tmp_path / "mm", "mm", *clips)
    theirs = _extract(stepvideo_config, extract_stepvideo, tmp_path / "mindspeed", "mindspeed", *clips)
    sample = torch.load(tmp_path / "mindspeed" / _lines(theirs)[0]["file"], weights_only=True)
    i2v = ["image_latents"] if task == "i2v" else []
    assert sorted(sample) == sorted(["prompt_ids", "prompt_mask", "video", *i2v])
    (llm, clip), (llm_mask, clip_mask) = sample["prompt_ids"], sample["prompt_mask"]
    assert llm.shape == (1, 32, 64) and llm_mask.shape == (1, 32) and clip.shape == (1, CLIP_LEN, 32)
    assert clip_mask.shape == (1, CLIP_LEN) and 0 < int(clip_mask.sum()) < CLIP_LEN
    from_ours, from_theirs = _losses(stepvideo_config, stepvideo_loader, build_stepvideo, step_plugin, [ours, theirs],
                                     (3, 4, 2, 2), *clips[2:])
    torch.testing.assert_close(from_theirs, from_ours, rtol=0, atol=0)


@pytest.mark.slow
def test_two_ranks_write_one_mindspeed_store_in_video_order(tmp_path) -> None:
    clips = _clips(17)
    one = _extract(stepvideo_config, extract_stepvideo, tmp_path / "one", "mindspeed", *clips)
    spawn_extraction(2, f"extract.output_dir={tmp_path / 'two'}", "extract.layout=mindspeed", *clips)
    assert _lines(tmp_path / "two" / "data.json") == _lines(one)
    assert not list((tmp_path / "two").glob("rank_*"))
    ours, theirs = MindSpeedFeatureDataset(one.parent / "data.jsonl"), MindSpeedFeatureDataset(tmp_path / "two")
    for i in range(4):
        for key in ("latents", "prompt_embeds", "prompt_embeds_2", "prompt_mask_2"):
            assert torch.equal(theirs[i][key], ours[i][key])


def test_unknown_layout_is_one_error(tmp_path) -> None:
    config = wan_config(f"extract.output_dir={tmp_path}", "extract.layout=megatron", "training.device=cpu",
                        task="extract")
    with pytest.raises(ConfigError, match=r"^extract.layout must be one of mm, mindspeed, got 'megatron'$"):
        extract_wan(config, create_runtime(config))
