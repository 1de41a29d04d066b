"""Config checks: the schema catches typos, shapes must fit the VAE and patch, the examples load."""

from __future__ import annotations

from pathlib import Path

import pytest
from diffusers import WanTransformer3DModel
from wan_testing import wan_config

from mm_core.errors import ConfigError
from mm_models_video.wan2_1.build import build_model
from mm_models_video.wan2_1.data import check_clip_fits, data_config
from mm_models_video.wan2_1.flavors import get_flavor
from mm_models_video.wan2_1.plugin import model_provider, parallel_plan
from mm_models_video.wan2_1.schema import check_model

EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "wan2_1"


def test_typo_in_model_json_is_one_line() -> None:
    with pytest.raises(ConfigError, match=r"unknown key 'model.predictor.hiden_size'; did you mean"):
        wan_config("model.predictor.hiden_size=64")
    with pytest.raises(ConfigError, match=r"model.ae.enable_tiling must be a boolean"):
        wan_config("model.ae.enable_tiling=maybe")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.dataset_param.num_frames=16", r"data.dataset_param: num_frames 16 must be 4k\+1 \(e.g. 13 or 17\)"),
        ("data.dataset_param.max_height=40", r"data.dataset_param: height 40 must be a multiple of 16"),
        ("data.dataset_param.max_width=50", r"data.dataset_param: width 50 must be a multiple of 16"),
    ],
)
def test_clip_shape_must_fit_vae_and_patch(override: str, message: str) -> None:
    config = wan_config(override)
    with pytest.raises(ConfigError, match=message):
        model_provider(config, None)


def _check_clip(*overrides: str) -> None:
    config = wan_config(*overrides)
    check_clip_fits(config, build_model(config.model))


def test_the_built_models_patch_size_sets_the_spatial_factor(tmp_path) -> None:
    width = "data.dataset_param.max_width=48"
    _check_clip(width)
    too_narrow = r"data.dataset_param: width 48 must be a multiple of 32 \(e.g. 32\) for Wan2.1 tiny"
    with pytest.raises(ConfigError, match=too_narrow):
        _check_clip("model.predictor.patch_size=[1, 4, 4]", width)
    # A pretrained transformer's own patch size counts, with none in model.json.
    WanTransformer3DModel(**{**get_flavor("tiny").predictor, "patch_size": (1, 4, 4)}).save_pretrained(tmp_path)
    with pytest.raises(ConfigError, match=too_narrow):
        _check_clip(f"model.predictor.from_pretrained={tmp_path}", width)


def test_the_data_section_is_parsed_once_per_content() -> None:
    assert data_config(wan_config()) is data_config(wan_config())
    assert data_config(wan_config("data.dataset_param.num_frames=13")).dataset_param.num_frames == 13


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.flavor=7b", r"model.flavor '7b' is not a Wan2.1 flavor \(known: tiny, 1.3b, 14b\)"),
        ("model.predictor.model_type=i2v", r"model.predictor.model_type 'i2v' differs from model.task 't2v'"),
        ("model.ae.dtype=int8", r"model.ae.dtype must be one of"),
        ("model.predictor.qk_norm_type=layernorm", r"model.predictor.qk_norm_type must be 'rmsnorm'"),
        ("model.predictor.hidden_size=102", r"model.predictor.hidden_size 102 is not divisible by num_heads 4"),
        ("model.predictor.hidden_size=100", r"100 / num_heads 4 = 25 per head, which must be even"),
        ("model.ae.from_pretrained=./no/such/vae", r"model.ae.from_pretrained: ./no/such/vae does not exist"),
        ("model.flavor=1.3b", r"model.tokenizer.from_pretrained \(or model.from_pretrained\) is needed"),
    ],
)
def test_model_section_errors(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_model(wan_config(override, "data.dataset_param.num_frames=81").model)


def test_parallel_plan_names_the_blocks(tiny_model) -> None:
    plan = parallel_plan(tiny_model, wan_config())
    assert plan.fsdp_modules == ("predictor.blocks.{*}",)
    assert plan.pipeline.layers == "predictor.blocks"
    assert len(tiny_model.get_submodule("predictor.blocks")) == 4


def test_examples_load_and_validate() -> None:
    sections = {
        "model": EXAMPLES / "model.json",
        "data": EXAMPLES / "data.json",
        "parallel.fsdp2": EXAMPLES / "fsdp2_config.yaml",
    }
    config = wan_config(files=(EXAMPLES / "pretrain_t2v_1.3b.yaml",), sections=sections)
    assert check_model(config.model).predictor["num_layers"] == 30
    assert config.model.predictor.hidden_size == 1536 and config.training.lr == 1e-5
    assert config.parallel.fsdp2.enable and config.parallel.fsdp2.sub_modules_to_wrap == ["predictor.blocks.{*}"]
    data = data_config(config)
    assert (data.dataset_param.num_frames, data.dataset_param.max_height, data.dataset_param.max_width) == (
        81, 480, 832,
    )
    extract = wan_config("extract.output_dir=features", task="extract", sections=sections)
    assert extract.extract.output_dir == "features"
