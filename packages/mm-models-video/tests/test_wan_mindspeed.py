"""MindSpeed-MM's own Wan2.1 files run unchanged: every model.json (pretrain, inference, feature extraction), the
data.json files, fsdp2_config.yaml and the launch scripts' flags; a model.json's architecture trains tiny."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from wan_testing import QUIET, SMALL_CLIPS

from mm_convert.cli import main as convert
from mm_core.cli import main as mm
from mm_core.errors import ConfigError
from mm_core.plugins import load_plugins, make_config
from mm_core.testing import launch_script_flags, run_training
from mm_models_video.wan2_1.build import build_model
from mm_models_video.wan2_1.mindspeed import diffusers_tiling, inference_values, inferred_flavor
from mm_models_video.wan2_1.plugin import settle

MINDSPEED = Path(__file__).resolve().parents[3] / "examples" / "wan2_1" / "mindspeed-mm"
PLUGIN = ["wan2_1"]
MODEL_FILES = sorted(p.relative_to(MINDSPEED).as_posix() for p in MINDSPEED.rglob("*model*.json"))
# The tiny flavor's transformer in MindSpeed-MM's predictor keys.
TINY_PREDICTOR = {"patch_size": [1, 2, 2], "text_len": 64, "in_dim": 4, "hidden_size": 128, "ffn_dim": 256,
                  "freq_dim": 64, "text_dim": 64, "img_dim": 32, "out_dim": 4, "num_heads": 4, "num_layers": 2,
                  "max_seq_len": 256, "pipeline_num_layers": [2]}


def _data_file(model_file: str) -> Path:
    folder = MINDSPEED / Path(model_file).parent
    own = folder / "feature_data.json"
    return own if own.is_file() else MINDSPEED / "feature_extract" / "data.json"


@pytest.mark.parametrize("model_file", MODEL_FILES)
def test_every_real_model_json_loads_with_its_data_and_fsdp2_files(model_file, caplog):
    sections = {"model": MINDSPEED / model_file, "data": _data_file(model_file),
                "parallel.fsdp2": MINDSPEED / "fsdp2_config.yaml"}
    config = make_config(load_plugins(PLUGIN), "run", [], sections)
    model = json.loads((MINDSPEED / model_file).read_text())
    for key in ("pipeline_class", "use_fused_rmsnorm", "FPDT", "patch", "dpo"):
        given = key in model or key in model.get("predictor", {})
        assert (f".{key}" in caplog.text) == given, key
    assert "pipeline_class" not in config.model and "FPDT" not in config.model.predictor
    if "predictor" in model:
        assert inferred_flavor(config.model) == ("14b" if "14b" in model_file else "1.3b")


def test_the_inference_model_json_feeds_mm_infer_and_its_unipc_sampler():
    config = make_config(load_plugins(PLUGIN), "infer", [], {"model": MINDSPEED / "14b/i2v/inference_model.json"})
    inf = inference_values(config)
    assert (inf.num_frames, inf.height, inf.width, inf.fps, inf.steps, inf.guidance_scale) == (81, 480, 832, 16, 50,
                                                                                                5.0)
    assert inf.prompt.endswith("samples_i2v_prompts.txt") and inf.output.startswith("examples/wan2.1/samples/14b")
    config = make_config(load_plugins(PLUGIN), "infer", [], {"model": MINDSPEED / "14b/i2v/inference_model.json"},
                         ["inference.steps=3"])
    assert inference_values(config).steps == 3


def test_wan2_1s_own_tiling_keys_are_diffusers_tiles_in_image_pixels():
    assert diffusers_tiling({"tile_size": [34, 34], "tile_stride": [18, 16]}) == {
        "tile_sample_min_height": 272, "tile_sample_min_width": 272, "tile_sample_stride_height": 144,
        "tile_sample_stride_width": 128}
    with pytest.raises(ConfigError, match=r"tiling_param.tile_size must be \[height, width\]"):
        diffusers_tiling({"tile_size": 34})


def _tiny_model_json(tmp_path: Path, **predictor) -> Path:
    """MindSpeed-MM's 1.3B T2V pretrain model.json with the tiny architecture (and bf16 encoders, as its
    feature-extraction files have them)."""
    model = json.loads((MINDSPEED / "1.3b/t2v/pretrain_model.json").read_text())
    model["predictor"].update(TINY_PREDICTOR, **predictor)
    model["ae"] = {"dtype": "bf16"}
    model["text_encoder"] = {"dtype": "bf16"}
    path = tmp_path / "model.json"
    path.write_text(json.dumps(model))
    return path


def test_a_model_json_architecture_trains_two_steps_with_the_real_fsdp2_yaml(tmp_path):
    sections = {"model": _tiny_model_json(tmp_path), "parallel.fsdp2": MINDSPEED / "fsdp2_config.yaml"}
    result = run_training(PLUGIN, tmp_path / "run", [
        *SMALL_CLIPS, *QUIET, "training.train_iters=2", "training.micro_batch_size=1", "training.global_batch_size=1",
        "training.device=cpu"], sections=sections)
    assert len(result.losses) == 2 and all(torch.isfinite(torch.tensor(list(result.losses.values()))))


def test_a_predictor_key_that_differs_from_the_transformer_it_loads_is_one_error_naming_it(tmp_path):
    config = make_config(load_plugins(PLUGIN), "run", [], {"model": _tiny_model_json(tmp_path)})
    folder = tmp_path / "transformer"
    build_model(config.model).predictor.save_pretrained(folder)
    wrong = make_config(load_plugins(PLUGIN), "run", [], {"model": _tiny_model_json(tmp_path, num_layers=3)},
                        [f"model.predictor.from_pretrained={folder}"])
    with pytest.raises(ConfigError, match=r"model.predictor.num_layers does not match the transformer in .*"
                                          r"num_layers=3, the weights have num_layers=2"):
        build_model(wrong.model)


@pytest.mark.parametrize("script", ["1.3b/t2v/pretrain.sh", "14b/t2v/pretrain_fsdp2.sh", "14b/i2v/pretrain.sh"])
def test_a_launch_scripts_flags_are_a_valid_run(script, capsys, tmp_path, restored_logging):
    folder = MINDSPEED / Path(script).parent
    model = next(p for p in sorted(folder.glob("pretrain_model*.json")) if ("fsdp2" in script) == ("fsdp2" in p.name))
    flags = launch_script_flags(MINDSPEED / script, MM_DATA=str(folder / "feature_data.json"), MM_MODEL=str(model),
                   SAVE_PATH=str(tmp_path / "save"), GBS="8")
    flags = [str(MINDSPEED / "fsdp2_config.yaml") if f.endswith("fsdp2_config.yaml") else f for f in flags]
    assert mm(["config", "--plugin", "wan2_1", *flags]) == 0
    out, err = capsys.readouterr()
    assert "Traceback" not in err and "error" not in err
    assert "--mm-tool ./mindspeed_mm/tools/tools.json" in err and "model.predictor.use_fused_rmsnorm" in err
    assert "from_pretrained: ./weights/Wan-AI/Wan2.1-" in out and "lr: 1.0e-05" in out


def test_the_readme_converter_commands_and_load_of_the_folder_converted_in_place(tmp_path, capsys):
    tiny = make_config(load_plugins(PLUGIN), "run", [], {"model": _tiny_model_json(tmp_path)})
    predictor = build_model(tiny.model).predictor
    reference = predictor.state_dict()
    folder = tmp_path / "Wan2.1-T2V-1.3B-Diffusers" / "transformer"
    predictor.save_pretrained(folder)
    assert convert(["WanConverter", "hf_to_mm", "--cfg.source_path", str(folder), "--cfg.target_path", str(folder),
                    "--cfg.target_parallel_config.pp_layers", "[1,1]"]) == 0
    assert convert(["WanConverter", "mm_to_hf", "--cfg.source_path", str(folder), "--cfg.target_path",
                    str(tmp_path / "back"), "--cfg.hf_dir", str(folder)]) == 0
    for weights in folder.glob("*.safetensors"):
        weights.unlink()  # what --load reads now is the MindSpeed-MM checkpoint
    config = make_config(load_plugins(PLUGIN), "run", [], {"model": _tiny_model_json(tmp_path)},
                         [f"model.from_pretrained={folder}/", f"training.output_dir={tmp_path / 'run'}"])
    settle(config)
    assert config.model.from_pretrained is None and "wan2_1-from-mindspeed-" in config.model.predictor.from_pretrained
    for name, tensor in build_model(config.model).predictor.state_dict().items():
        torch.testing.assert_close(tensor, reference[name], rtol=0, atol=0, msg=name)
    back = build_model(make_config(load_plugins(PLUGIN), "run", [], {"model": _tiny_model_json(tmp_path)},
                                   [f"model.predictor.from_pretrained={tmp_path / 'back'}"]).model)
    torch.testing.assert_close(back.predictor.state_dict(), reference, rtol=0, atol=0)
    # The same weights as MindSpeed-MM's FSDP2 training saves them (DCP), beside the transformer's config.json.
    dcp = tmp_path / "fsdp2"
    assert convert(["WanConverter", "mm_to_dcp", "--cfg.source_path", str(folder), "--cfg.target_path", str(dcp)]) == 0
    shutil.copy(folder / "config.json", dcp / "config.json")
    config = make_config(load_plugins(PLUGIN), "run", [], {"model": _tiny_model_json(tmp_path)},
                         [f"model.from_pretrained={dcp}", f"training.output_dir={tmp_path / 'run'}"])
    settle(config)
    torch.testing.assert_close(build_model(config.model).predictor.state_dict(), reference, rtol=0, atol=0)


def test_load_of_a_mindspeed_checkpoint_without_its_config_is_one_error(tmp_path):
    (tmp_path / "save" / "release").mkdir(parents=True)
    config = make_config(load_plugins(PLUGIN), "run", [], {}, [f"model.from_pretrained={tmp_path / 'save'}"])
    with pytest.raises(ConfigError, match="is a MindSpeed-MM checkpoint without config.json"):
        settle(config)
    config = make_config(load_plugins(PLUGIN), "run", [], {}, [f"model.from_pretrained={tmp_path / 'weights'}"])
    with pytest.raises(ConfigError, match=r"model.from_pretrained \(--load\) .*weights does not exist"):
        settle(config)


def test_mm_infer_runs_a_mindspeed_inference_model_json_with_its_unipc_sampler(tmp_path, capsys, restored_logging):
    model = json.loads((MINDSPEED / "1.3b/t2v/inference_model.json").read_text())
    model["predictor"].update({k: v for k, v in TINY_PREDICTOR.items() if k != "pipeline_num_layers"})
    for part in ("ae", "tokenizer", "text_encoder"):
        model[part].pop("from_pretrained")
    model.update(prompt="a red circle", save_path=str(tmp_path / "samples"),
                 pipeline_config={"input_size": [5, 32, 32]})
    model["diffusion"]["num_inference_steps"] = 2
    path = tmp_path / "inference_model.json"
    path.write_text(json.dumps(model))
    assert mm(["infer", "--plugin", "wan2_1", "--model", str(path), "training.device=cpu"]) == 0
    out = capsys.readouterr().out
    assert f"wrote {tmp_path / 'samples' / 'wan2_1.mp4'}: 5 frames of 32x32" in out


def test_an_inference_scripts_flags_are_a_valid_infer(capsys, restored_logging):
    flags = launch_script_flags(MINDSPEED / "1.3b/t2v/inference.sh",
                                MM_MODEL=str(MINDSPEED / "1.3b/t2v/inference_model.json"), GBS="1")
    assert mm(["config", "--plugin", "wan2_1", *flags]) == 0
    out, err = capsys.readouterr()
    assert "Traceback" not in err and "error" not in err and "model.pipeline_class" in err
    assert "from_pretrained: ./weights/Wan-AI/Wan2.1-T2V-1.3B-Diffusers/transformer/" in out


def test_the_feature_extraction_scripts_flags_are_a_valid_extract(capsys, restored_logging):
    folder = MINDSPEED / "feature_extract"
    flags = launch_script_flags(folder / "feature_extraction.sh", MM_MODEL=str(folder / "model_i2v.json"),
                   MM_DATA=str(folder / "data.json"), GBS="1")
    assert mm(["config", "--plugin", "wan2_1", *flags]) == 0
    out, err = capsys.readouterr()
    assert "Traceback" not in err and "error" not in err and "i2v_vae_encode_tiling" not in err
    assert "tile_size:\n      - 34\n      - 34" in out and "task: i2v" in out and "i2v_vae_encode_tiling: false" in out


def test_the_posttrain_script_with_video_dpo_stacked_reads_the_dpo_block(capsys, restored_logging):
    folder = MINDSPEED / "14b/i2v"
    flags = launch_script_flags(folder / "posttrain.sh", MM_MODEL=str(folder / "posttrain_model.json"),
                   MM_DATA=str(folder / "feature_data.json"), GBS="8")
    assert "--plugin wan2_1 --plugin video_dpo" in (folder / "posttrain.sh").read_text()
    assert mm(["config", "--plugin", "wan2_1", "--plugin", "video_dpo", *flags]) == 0
    out, err = capsys.readouterr()
    assert "Traceback" not in err and "error" not in err and "model.dpo" not in err
    assert "histogram_path: /video_path/video_score_histogram.json" in out and "loss_beta: 2000" in out
