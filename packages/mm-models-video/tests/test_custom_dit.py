"""The seeds' new-model guide as the custom_dit plugin: it trains, its example files load, FSDP2 matches one process."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKLWan
from diffusers.models.transformers.transformer_wan import WanTransformerBlock
from transformers import UMT5Config, UMT5EncoderModel

from mm_core.errors import ConfigError
from mm_core.plugins import load_plugins, make_config
from mm_core.testing import spawn_training
from mm_models_video.custom_dit.build import build_model, build_predictor
from mm_models_video.custom_dit.data import data_config
from mm_models_video.custom_dit.model import CustomModel
from mm_models_video.custom_dit.plugin import model_provider
from mm_models_video.encoders import UMT5_XXL
from mm_models_video.flow_matching import FlowMatching
from mm_parallel.fsdp2 import resolve

EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "custom_dit"
TESTS = Path(__file__).parent
QUIET = ["logging.progress_bar=false"]
EXAMPLE_SECTIONS = {
    "model": EXAMPLES / "model.json",
    "data": EXAMPLES / "data.json",
    "parallel.fsdp2": EXAMPLES / "fsdp2_config.yaml",
}


def _config(*overrides: str, files: tuple = (), sections: dict | None = None):
    return make_config(load_plugins(["custom_dit"]), "run", list(files), sections, [*QUIET, *overrides])


def test_embedded_run_loss_goes_down(mm_train) -> None:
    result = mm_train(["custom_dit"], *QUIET, "training.train_iters=16", "training.save_interval=16")
    losses = [result.losses[step] for step in sorted(result.losses)]
    assert len(losses) == 16 and all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-4:]) / 4 < 0.8 * sum(losses[:4]) / 4
    assert (result.checkpoint / "config.yaml").is_file()


def test_dit_predicts_the_latents_shape() -> None:
    config = _config()
    dit = build_predictor(config.model.predictor)
    latents = torch.randn(2, 4, 3, 8, 6)
    out = dit(latents, torch.tensor([10.0, 900.0]), torch.randn(2, 7, 64))
    assert out.shape == latents.shape
    assert isinstance(dit.blocks[0], WanTransformerBlock)


def test_examples_load_as_the_guide_writes_them() -> None:
    config = _config(files=(EXAMPLES / "pretrain_custom.yaml",), sections=EXAMPLE_SECTIONS)
    assert config.model.predictor.num_layers == 30 and config.model.predictor.head_dim == 128
    fsdp = config.parallel.fsdp2
    assert fsdp.enable and fsdp.sharding_size == 8 and fsdp.param_dtype == "bf16"
    param = data_config(config).dataset_param
    assert (param.num_frames, param.max_height, param.max_width) == (49, 480, 832)
    assert param.tokenizer_config["model_max_length"] == 512
    assert config.training.lr == 1.0e-5 and config.training.lr_decay_style == "constant"
    # The FSDP2 patterns name modules of the full-size model (built on the meta device: no memory).
    with torch.device("meta"):
        model = CustomModel(
            AutoencoderKLWan(), UMT5EncoderModel(UMT5Config(**UMT5_XXL)), build_predictor(config.model.predictor),
            FlowMatching(),
        )
    wrapped, ignored = resolve(model, fsdp)
    assert len(wrapped) == 31 and {id(m) for m in ignored} == {id(model.ae), id(model.text_encoder)}
    assert 1.2e9 < sum(p.numel() for p in model.predictor.parameters()) < 1.5e9


def test_example_weights_missing_is_one_clear_error() -> None:
    config = _config(sections=EXAMPLE_SECTIONS)
    with pytest.raises(ConfigError, match=r"model.ae.from_pretrained: ./ckpt/Wan-AI/.*/vae/ does not exist"):
        model_provider(config=config, runtime=None)


def test_wrong_sizes_are_named() -> None:
    with pytest.raises(ConfigError, match="model.predictor.text_dim is 32 but the text encoder's d_model gives 64"):
        build_model(_config("model.predictor.text_dim=32").model)
    with pytest.raises(ConfigError, match=r"data.dataset_param: height 40 must be a multiple of 16 \(e.g. 32\) \(Wan"):
        model_provider(config=_config("data.dataset_param.max_height=40"), runtime=None)
    with pytest.raises(ConfigError, match="model.predictor.model_id must be 'custom_dit'"):
        build_model(_config("model.predictor.model_id=wandit").model)


FSDP2 = [
    "parallel.fsdp2.enable=true",
    "parallel.fsdp2.sub_modules_to_wrap=['predictor.blocks.{*}', predictor.proj_out]",
    "parallel.fsdp2.ignored_modules=[ae, text_encoder]",
]


@pytest.mark.slow
def test_fsdp2_two_processes_match_one(mm_train, tmp_path) -> None:
    plugins = ["custom_dit", "custom_dit_fixed_noise"]
    run = ["training.train_iters=3", "training.save_interval=0", "training.micro_batch_size=2"]
    single = mm_train(plugins, *QUIET, *run, output_dir=tmp_path / "one").losses
    double = spawn_training(2, plugins, tmp_path / "two", [*QUIET, *run, "training.micro_batch_size=1", *FSDP2],
                            sys_path=[TESTS])
    assert double == pytest.approx(single, rel=1e-4)
