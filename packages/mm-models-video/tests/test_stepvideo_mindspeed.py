"""MindSpeed-MM's own Step-Video files run unchanged: model.json, data.json, the launch script's flags, a model.json's
architecture, and its module paths in fsdp2 patterns."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from mm_core.cli import main as mm
from mm_core.errors import ConfigError
from mm_core.plugins import load_plugins, make_config
from mm_core.testing import launch_script_flags, run_training
from mm_data.clip_options import clip_options
from mm_models_video.stepvideo import model_json
from mm_models_video.stepvideo.build import build_model, build_predictor
from mm_models_video.stepvideo.data import check_features, data_config
from mm_models_video.stepvideo.flavors import get_flavor
from mm_models_video.stepvideo.schema import check_model
from mm_models_video.stepvideo.transformer import StepVideoModel
from mm_parallel.patterns import with_aliases

MINDSPEED = Path(__file__).resolve().parents[3] / "examples" / "stepvideo" / "mindspeed-mm"
PLUGIN = ["stepvideo"]
FILES = {
    "t2v": ("t2v/pretrain_t2v_model.json", "t2v/data_static_resolution.json"),
    "i2v": ("i2v/pretrain_i2v_model.json", "i2v/data_static_resolution.json"),
    "extract t2v": ("feature_extract/model_stepvideo.json", "feature_extract/data.json"),
    "extract i2v": ("feature_extract/model_stepvideo_i2v.json", "feature_extract/data_i2v.json"),
    "dpo": ("t2v/posttrain_t2v_model.json", "t2v/data_dpo.json"),
}


@pytest.mark.parametrize("name", FILES)
def test_each_real_model_and_data_json_loads_and_names_the_keys_it_ignores(name, caplog):
    model, data = (MINDSPEED / path for path in FILES[name])
    plugins = [*PLUGIN, "video_dpo"] if name == "dpo" else PLUGIN
    config = make_config(load_plugins(plugins), "run", [], {"model": model, "data": data}, [])
    assert config.model.predictor.get("fa_layout") is None and config.model.get("load_video_features") is None
    assert "data.dataloader_param.sampler_type" in caplog.text
    # The dataset's decoding and text-processing keys are named by the shared loader when it reads the data.
    named = {key for key, _ in clip_options(data_config(config).dataset_param).unused}
    assert {"video_reader_type", "use_text_processer"} <= named
    tokenizers = model_json.with_data_tokenizers(config).tokenizer
    assert tokenizers.llm.model_max_length == 320 and tokenizers.clip.from_pretrained.endswith("hunyuan_clip/tokenizer")
    encoders = model_json.text_encoders(config.model)
    assert encoders["llm"].dtype == "bf16" and encoders["clip"].from_pretrained.endswith("clip_text_encoder")
    if name.endswith("i2v"):
        assert "model.ae.i2v_processor" in caplog.text
    if name == "dpo":
        assert config.model.dpo.loss_beta == 2000 and config.model.patch.ae_float32


@pytest.mark.parametrize(("script", "name", "plugins"), [
    ("t2v/pretrain_t2v.sh", "t2v", ["stepvideo"]),
    ("t2v/posttrain_t2v_dpo.sh", "dpo", ["stepvideo", "video_dpo"]),
])
def test_the_launch_script_with_its_model_and_data_files_is_a_valid_config(script, name, plugins, capsys, tmp_path,
                                                                           restored_logging):
    flags = launch_script_flags(MINDSPEED / script, MM_DATA=str(MINDSPEED / FILES[name][1]),
                   MM_MODEL=str(MINDSPEED / FILES[name][0]), SAVE_PATH=str(tmp_path / "save"), GBS="8")
    assert mm(["config", *(arg for plugin in plugins for arg in ("--plugin", plugin)), *flags]) == 0
    out, err = capsys.readouterr()
    assert "Traceback" not in err and "error" not in err
    for named in ("--no-gradient-accumulation-fusion: accepted and ignored", "--allow-tf32",
                  "model.predictor.fa_layout", "model.load_video_features"):
        assert named in err, named
    assert "no meaning for this plugin" not in err
    assert "from_pretrained: your_converted_dit_ckpt_dir" in out and "global_batch_size: 8" in out


def _tiny_files(tmp_path: Path, **predictor: object) -> dict[str, Path]:
    """The real t2v model.json with the tiny flavor's architecture and no weight files, and the real feature
    extraction data.json over generated clips (no data_path) of the tiny flavor's shape."""
    tiny = get_flavor("tiny")
    model = json.loads((MINDSPEED / FILES["t2v"][0]).read_text())
    arguments = {ours: tiny.predictor[theirs] for ours, theirs in (
        ("num_layers", "num_layers"), ("num_heads", "num_attention_heads"), ("head_dim", "attention_head_dim"),
        ("channel_split", "rope_ch_split"), ("in_channels", "in_channels"), ("out_channels", "out_channels"),
        ("caption_channels", "caption_channels"))}
    model["predictor"].update(arguments, **predictor)
    model["ae"].update(from_pretrained=None, z_channels=tiny.vae["z_channels"])
    for encoder in model["text_encoder"]:
        encoder["from_pretrained"] = None
    data = json.loads((MINDSPEED / FILES["extract t2v"][1]).read_text())
    param = data["dataset_param"]
    param["basic_parameters"].update(data_path="", data_folder="")
    param["preprocess_parameters"].update(num_frames=17, max_height=tiny.height, max_width=tiny.width)
    for tokenizer in param["tokenizer_config"]:
        tokenizer.update(from_pretrained=None, model_max_length=None)
    files = {"model": tmp_path / "model.json", "data": tmp_path / "data.json"}
    files["model"].write_text(json.dumps(model))
    files["data"].write_text(json.dumps(data))
    return files


def test_a_model_json_architecture_builds_that_model_and_trains_two_steps(tmp_path):
    files = _tiny_files(tmp_path, num_layers=3)
    config = make_config(load_plugins(PLUGIN), "run", [], files, ["training.device=cpu"])
    model = build_model(config.model)
    assert len(model.predictor.transformer_blocks) == 3 and next(model.ae.parameters()).dtype == torch.bfloat16
    patched = make_config(load_plugins(PLUGIN), "run", [], files, ["model.patch.ae_float32=true"])
    assert next(build_model(patched.model).ae.parameters()).dtype == torch.float32
    result = run_training(PLUGIN, tmp_path / "run", ["training.train_iters=2", "training.micro_batch_size=1",
                                                     "training.global_batch_size=1", "training.bf16=false",
                                                     "training.device=cpu", "logging.progress_bar=false",
                                                     "logging.tensorboard=false"], sections=files)
    assert len(result.losses) == 2 and all(torch.isfinite(torch.tensor(list(result.losses.values()))))


def test_an_architecture_that_differs_from_the_checkpoint_is_one_error_naming_the_key(tmp_path):
    StepVideoModel(**get_flavor("tiny").predictor).save_pretrained(tmp_path / "transformer")
    files = _tiny_files(tmp_path, num_layers=3, from_pretrained=str(tmp_path / "transformer"))
    config = make_config(load_plugins(PLUGIN), "run", [], files, [])
    with pytest.raises(ConfigError, match=r"model.predictor.num_layers 3 does not match the transformer in .*"
                                          r"\(num_layers=2\)$"):
        build_model(config.model)


def test_a_design_key_mm_does_not_implement_is_one_error_naming_it(tmp_path):
    files = _tiny_files(tmp_path, norm_eps=1e-5)
    config = make_config(load_plugins(PLUGIN), "run", [], files, [])
    with pytest.raises(ConfigError, match=r"model.predictor.norm_eps must be 1e-06 .*, got 1e-05$"):
        build_model(config.model)


def test_a_real_size_architecture_without_weights_says_it_starts_from_random_weights(caplog):
    model = make_config(load_plugins(PLUGIN), "run", [], {"model": MINDSPEED / FILES["t2v"][0]}, []).model
    with torch.device("meta"):
        predictor = build_predictor(model, check_model(model))
    assert len(predictor.transformer_blocks) == 24
    assert re.search(r"the model.json architecture \(\d+\.\d\dB parameters\) starts from random weights", caplog.text)


def test_mindspeed_module_paths_resolve_to_the_model():
    patterns = with_aliases(["predictor.transformer_blocks.{*}", "text_encoder.text_encoders.0",
                             "predictor.transformer_blocks.{*}.attn1.proj_qkv"], model_json.MINDSPEED_MODULES)
    assert patterns == ["predictor.transformer_blocks.{*}", "text_encoder.llm",
                        "predictor.transformer_blocks.{*}.attn1.wqkv"]


def test_a_mindspeed_feature_store_without_hunyuan_clip_embeddings_is_one_error(tmp_path):
    (tmp_path / "features").mkdir()
    torch.save({"video": torch.zeros(3, 4, 2, 2), "prompt_ids": torch.zeros(1, 32, 64),
                "prompt_mask": torch.ones(1, 32, dtype=torch.long)}, tmp_path / "features" / "a.pt")
    (tmp_path / "data.jsonl").write_text(json.dumps({"file": "features/a.pt", "cap": "a red circle"}) + "\n")
    data = json.loads((MINDSPEED / FILES["t2v"][1]).read_text())
    data["dataset_param"]["basic_parameters"].update(data_path=str(tmp_path / "data.jsonl"), data_folder=str(tmp_path))
    (tmp_path / "data.json").write_text(json.dumps(data))
    config = make_config(load_plugins(PLUGIN), "run", [], {"data": tmp_path / "data.json"}, [])
    with pytest.raises(ConfigError, match=r"the features in .*data.jsonl hold no clip_embeds, which model.task=t2v "):
        check_features(config, data_config(config))
