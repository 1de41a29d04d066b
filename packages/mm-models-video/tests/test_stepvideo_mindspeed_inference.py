"""MindSpeed-MM's Step-Video inference files run unchanged under ``mm infer`` (every key honoured, mapped or named
in a warning), and ``--load`` of a MindSpeed-MM Step-Video checkpoint gives the predictor its weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from stepvideo_testing import QUIET, SHORT_RUN

from mm_convert.cli import main as convert
from mm_core.cli import main as mm
from mm_core.errors import ConfigError
from mm_core.plugins import load_plugins, make_config
from mm_core.testing import launch_script_flags
from mm_models_video.stepvideo import model_json
from mm_models_video.stepvideo.build import build_model
from mm_models_video.stepvideo.flavors import get_flavor
from mm_models_video.stepvideo.transformer import StepVideoModel

MINDSPEED = Path(__file__).resolve().parents[3] / "examples" / "stepvideo" / "mindspeed-mm"
INFERENCE = {task: MINDSPEED / task / f"inference_{task}_model.json" for task in ("t2v", "i2v")}
TINY_CLIP = ["inference.num_frames=17", "inference.height=32", "inference.width=32", "inference.steps=2"]


def _script_flags(task: str, **values: str) -> list[str]:
    return launch_script_flags(MINDSPEED / task / f"inference_{task}.sh", MM_MODEL=str(INFERENCE[task]), **values)


@pytest.mark.parametrize("task", ["t2v", "i2v"])
def test_the_inference_script_and_its_model_json_are_a_valid_config(task, capsys, restored_logging):
    assert mm(["config", "--plugin", "stepvideo", *_script_flags(task, LOAD_PATH="ckpt", GBS="1")]) == 0
    out, err = capsys.readouterr()
    assert "Traceback" not in err and "error" not in err
    for named in ("model.pipeline_config.version", "model.pipeline_config.use_attention_mask",
                  "model.unload_text_encoder", "model.frame_interval", "model.pipeline_class", "model.device"):
        assert named in err, named
    assert "from_pretrained: ckpt" in out


@pytest.mark.parametrize("task", ["t2v", "i2v"])
def test_the_inference_model_json_sets_the_run_of_mm_infer(task):
    config = make_config(load_plugins(["stepvideo"]), "infer", [], {"model": INFERENCE[task]}, [*QUIET])
    inf = model_json.inference_values(config)
    frames = {"t2v": 204, "i2v": 102}[task]
    assert (inf.steps, inf.guidance_scale, inf.fps, inf.num_frames, inf.height, inf.width) == (50, 9.0, 25, frames,
                                                                                               544, 992)
    assert inf.output == f"examples/stepvideo/{task}/{task}_result/stepvideo.mp4"
    assert inf.prompt.endswith("prompts.txt")
    model = model_json.inference_task(config.model)
    assert model.task == task
    tokenizers = model_json.tokenizers(model)
    assert tokenizers["llm"].model_max_length == 320 and tokenizers["clip"].from_pretrained.endswith("tokenizer")
    if task == "i2v":
        assert inf.motion_score == 5.0 and inf.image.endswith("samples_i2v_images.txt")
    # The section's own values win over the file's.
    given = make_config(load_plugins(["stepvideo"]), "infer", [], {"model": INFERENCE[task]}, ["inference.steps=4"])
    assert model_json.inference_values(given).steps == 4


def test_a_model_type_that_contradicts_the_task_is_one_error():
    config = make_config(load_plugins(["stepvideo"]), "infer", [], {"model": INFERENCE["t2v"]}, ["model.task=i2v"])
    with pytest.raises(ConfigError, match="model.pipeline_config.model_type is 't2v' but model.task is 'i2v'"):
        model_json.inference_task(config.model)


def _tiny_release(tmp_path: Path) -> tuple[StepVideoModel, Path, Path]:
    """The tiny predictor as a release folder and, by mm-convert's hf_to_mm, as a MindSpeed-MM checkpoint (TP 2,
    two pipeline stages)."""
    torch.manual_seed(5)
    predictor = StepVideoModel(**get_flavor("tiny").predictor).eval()
    release, checkpoint = tmp_path / "release", tmp_path / "mindspeed"
    predictor.save_pretrained(release)
    assert convert(["StepVideoConverter", "hf_to_mm", "--cfg.source_path", str(release), "--cfg.target_path",
                    str(checkpoint), "--cfg.target_parallel_config.tp_size", "2",
                    "--cfg.target_parallel_config.pp_layers", "[1,1]"]) == 0
    assert (checkpoint / "release" / "mp_rank_01_001" / "model_optim_rng.pt").is_file()
    return predictor, release, checkpoint


def _tiny_inference_file(tmp_path: Path, task: str = "t2v") -> Path:
    """The real inference model.json of ``task`` with the tiny architecture, no weight files and a two-prompt list
    (TI2V: one first frame for both)."""
    tiny = get_flavor("tiny")
    model = json.loads(INFERENCE[task].read_text())
    arguments = tiny.predictor
    model["predictor"].update(num_layers=arguments["num_layers"], num_heads=arguments["num_attention_heads"],
                              head_dim=arguments["attention_head_dim"], channel_split=arguments["rope_ch_split"],
                              in_channels=4, out_channels=4, caption_channels=arguments["caption_channels"],
                              patch_size=None, patch_size_thw=None)
    model["ae"].update(from_pretrained=None, z_channels=tiny.vae["z_channels"])
    for entry in (*model["text_encoder"], *model["tokenizer"]):
        entry.update(from_pretrained=None)
    for entry in model["tokenizer"]:
        entry.update(model_max_length=None)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\na blue square moving left\n")
    model.update(prompt=str(prompts), save_path=str(tmp_path / "videos"))
    if task == "i2v":
        Image.new("RGB", (40, 36), (200, 30, 30)).save(tmp_path / "first.png")
        (tmp_path / "images.txt").write_text(f"{tmp_path / 'first.png'}\n")
        model["image"] = str(tmp_path / "images.txt")
    path = tmp_path / "inference_model.json"
    path.write_text(json.dumps(model))
    return path


@pytest.mark.parametrize("layout", ["megatron", "fsdp2"])
def test_load_of_a_mindspeed_checkpoint_is_the_predictors_weights(tmp_path, layout):
    predictor, _, checkpoint = _tiny_release(tmp_path)
    if layout == "fsdp2":  # as MindSpeed-MM's FSDP2 training saves it (DCP)
        assert convert(["StepVideoConverter", "mm_to_dcp", "--cfg.source_path", str(checkpoint),
                        "--cfg.target_path", str(tmp_path / "dcp")]) == 0
        checkpoint = tmp_path / "dcp"
    config = make_config(load_plugins(["stepvideo"]), "infer", [], {"model": _tiny_inference_file(tmp_path)},
                         [*QUIET, f"model.from_pretrained={checkpoint}", "model.flavor=tiny"])
    loaded = build_model(config.model).predictor.state_dict()
    assert loaded.keys() == predictor.state_dict().keys()
    assert all(torch.equal(loaded[k], v) for k, v in predictor.state_dict().items())


@pytest.mark.slow
def test_mm_infer_runs_the_t2v_inference_file_with_load(tmp_path, restored_logging):
    _, _, checkpoint = _tiny_release(tmp_path)
    model_file = _tiny_inference_file(tmp_path)
    assert mm(["infer", "--plugin", "stepvideo", "--mm-model", str(model_file), "--load", str(checkpoint),
               "model.flavor=tiny", *TINY_CLIP]) == 0
    assert sorted(p.name for p in (tmp_path / "videos").iterdir()) == ["stepvideo_0.mp4", "stepvideo_1.mp4"]


@pytest.mark.slow
def test_mm_infer_runs_the_ti2v_inference_file(tmp_path, restored_logging):
    torch.manual_seed(5)
    predictor = StepVideoModel(**{**get_flavor("tiny").predictor, "use_additional_conditions": True})
    predictor.save_pretrained(tmp_path / "release")
    model_file = _tiny_inference_file(tmp_path, "i2v")
    assert mm(["infer", "--plugin", "stepvideo", "--mm-model", str(model_file), "model.flavor=tiny",
               f"model.predictor.from_pretrained={tmp_path / 'release'}", *TINY_CLIP]) == 0
    assert sorted(p.name for p in (tmp_path / "videos").iterdir()) == ["stepvideo_0.mp4", "stepvideo_1.mp4"]


def test_training_from_a_mindspeed_checkpoint_starts_from_its_weights(mm_train, tmp_path):
    _, release, checkpoint = _tiny_release(tmp_path)
    run = [*SHORT_RUN, "training.train_iters=1", "training.global_batch_size=1", "model.flavor=tiny"]
    from_release = mm_train(["stepvideo"], *run, f"model.predictor.from_pretrained={release}",
                            output_dir=tmp_path / "release_run")
    from_load = mm_train(["stepvideo"], *run, f"model.from_pretrained={checkpoint}", output_dir=tmp_path / "load_run")
    assert from_load.losses == from_release.losses


def test_a_checkpoint_of_another_architecture_is_one_error_naming_load(tmp_path):
    _, _, checkpoint = _tiny_release(tmp_path)
    overrides = [f"model.from_pretrained={checkpoint}", "model.flavor=tiny", "model.predictor.num_layers=3"]
    config = make_config(load_plugins(["stepvideo"]), "run", [], None, [*QUIET, *overrides])
    with pytest.raises(ConfigError, match=f"--load {checkpoint} does not fit the model.json's transformer"):
        build_model(config.model)
