"""MindSpeed-MM's own OpenSoraPlan 1.3 files run unchanged: model.json, data.json, the launch script's flags, a
model.json's architecture, and MindSpeed-MM's module paths in fsdp2 patterns."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from mm_convert import TensorSource
from mm_convert.cli import main as convert
from mm_core.cli import main as mm
from mm_core.errors import ConfigError
from mm_core.plugins import load_plugins, make_config
from mm_core.testing import launch_script_flags, run_training
from mm_models_video.opensoraplan1_3.build import build_model, build_predictor
from mm_models_video.opensoraplan1_3.convert import RELEASE_TO_MM
from mm_models_video.opensoraplan1_3.flavors import FLAVORS
from mm_models_video.opensoraplan1_3.mindspeed import MINDSPEED_MODULES
from mm_models_video.opensoraplan1_3.schema import check_model
from mm_parallel.patterns import with_aliases

MINDSPEED = Path(__file__).resolve().parents[3] / "examples" / "opensoraplan1_3" / "mindspeed-mm"
PLUGIN = ["opensoraplan1_3"]
FILES = [("t2v/pretrain_t2v_model.json", "t2v/data_static_resolution.json"),
         ("t2v/pretrain_t2v_model.json", "t2v/data_dynamic_resolution.json"),
         ("i2v/pretrain_i2v_model.json", "i2v/data_i2v.json"),
         ("t2v_A3/pretrain_t2v_model.json", "t2v_A3/data_feature.json")]
# The tiny flavor in model.json's names (mindspeed.ARGUMENT_KEYS reversed).
TINY = FLAVORS["tiny"]
TINY_PREDICTOR = {"num_layers": 2, "num_heads": TINY.predictor["num_attention_heads"],
                  "head_dim": TINY.predictor["attention_head_dim"], **{
                      key: TINY.predictor[key] for key in ("cross_attention_dim", "caption_channels", "sparse_n")}}
TINY_AE = {key: TINY.ae[key] for key in ("base_channels", "encoder_num_resblocks", "encoder_energy_flow_hidden_size",
                                         "decoder_num_resblocks", "decoder_energy_flow_hidden_size",
                                         "connect_res_layer_num", "scale", "shift")}


@pytest.mark.parametrize(("model", "data"), FILES)
def test_each_real_file_loads_and_the_warnings_name_the_ignored_keys(model, data, caplog):
    config = make_config(load_plugins(PLUGIN), "run", [], {"model": MINDSPEED / model, "data": MINDSPEED / data}, [])
    assert config.model.predictor.num_layers == 32 and config.model.predictor.pipeline_num_layers == [8, 8, 8, 8]
    for ignored in ("model.predictor.fa_layout", "model.diffusion.device", "model.ae.output_dtype",
                    "data.dataset_param.preprocess_parameters.train_pipeline", "data.dataloader_param.sampler_type"):
        assert ignored in caplog.text, ignored
        assert config.get_path(ignored) is None
    assert "fa_layout" not in config.model.predictor


@pytest.mark.parametrize("task", ["t2v", "i2v"])
def test_each_inference_model_json_loads_and_names_what_mm_infer_does_its_own_way(task, caplog):
    files = {"model": MINDSPEED / f"{task}/inference_{task}_model.json"}
    config = make_config(load_plugins(PLUGIN), "infer", [], files, [f"model.task={task}"])
    assert config.model.diffusion.num_inference_steps == 100
    assert config.model.pipeline_config.input_size == [93, 352, 640]
    for ignored in ("model.pipeline_class", "model.use_prompt_preprocess", "model.frame_interval", "model.device"):
        assert ignored in caplog.text, ignored
    check_model(config.model)
    i2v_without_task = make_config(load_plugins(PLUGIN), "infer", [],
                                   {"model": MINDSPEED / "i2v/inference_i2v_model.json"}, [])
    with pytest.raises(ConfigError, match="model.pipeline_config.model_type 'i2v' needs model.task=i2v"):
        check_model(i2v_without_task.model)


@pytest.mark.parametrize("script", ["t2v/pretrain_t2v.sh", "i2v/pretrain_i2v.sh", "t2v_A3/pretrain_t2v_A3.sh"])
def test_each_launch_script_with_its_model_and_data_files_is_a_valid_run(script, capsys, tmp_path, restored_logging):
    text = (MINDSPEED / script).read_text()
    repo = MINDSPEED.parents[2]
    files = {name: str(repo / path) for name, path in re.findall(r'^(MM_DATA|MM_MODEL)="(.*)"', text, re.M)}
    flags = launch_script_flags(MINDSPEED / script, **files, SAVE_PATH=str(tmp_path / "save"),
                   LOAD_PATH="weights/open-sora-plan/93x480p", GBS="8")
    assert mm(["config", "--plugin", "opensoraplan1_3", *flags]) == 0
    out, err = capsys.readouterr()
    assert "Traceback" not in err and "error" not in err
    for named in ("--use-distributed-optimizer: accepted and ignored", "--allow-tf32: accepted and ignored",
                  "model.predictor.fa_layout",
                  "data.dataloader_param.sampler_type"):
        assert named in err, named
    for line in ("from_pretrained: weights/open-sora-plan/93x480p", "global_batch_size: 8", "granularity: full",
                 "lr_decay_style: constant", "adam_eps: 1.0e-15", f"output_dir: {tmp_path / 'save'}"):
        assert line in out, line


def _tiny_model(path: Path, **predictor: object) -> dict:
    """A MindSpeed-MM model.json with tiny architecture values and no pretrained weights."""
    model = json.loads(path.read_text())
    model["predictor"].update(TINY_PREDICTOR, pipeline_num_layers=[2], **predictor)
    model["ae"].update(TINY_AE, from_pretrained=None, dtype="fp32")
    model["text_encoder"].update(from_pretrained=None, dtype="fp32")
    model["max_cp_size"] = 1  # the generated clips' 3 latent frames
    return model


def _tiny_files(tmp_path: Path, **predictor: object) -> dict[str, Path]:
    """MindSpeed-MM's t2v model.json and static data.json with tiny architecture values, generated clips and no
    pretrained weights."""
    model = _tiny_model(MINDSPEED / "t2v/pretrain_t2v_model.json", **predictor)
    data = json.loads((MINDSPEED / "t2v/data_static_resolution.json").read_text())
    data["dataset_param"]["basic_parameters"]["data_path"] = ""
    data["dataset_param"]["preprocess_parameters"].update(num_frames=9, min_num_frames=9, max_height=32, max_width=48,
                                                          train_fps=None)
    data["dataset_param"]["tokenizer_config"].update(from_pretrained=None, model_max_length=32)
    data["dataloader_param"]["num_workers"] = 0
    files = {"model": tmp_path / "model.json", "data": tmp_path / "data.json"}
    files["model"].write_text(json.dumps(model))
    files["data"].write_text(json.dumps(data))
    return files


def test_a_model_json_architecture_builds_that_model_and_trains_two_steps(tmp_path, caplog):
    files = _tiny_files(tmp_path)
    result = run_training(PLUGIN, tmp_path / "run", [
        "model.flavor=tiny", "training.train_iters=2", "training.micro_batch_size=1", "training.global_batch_size=1",
        "training.device=cpu", "logging.progress_bar=false", "logging.tensorboard=false", "training.save_interval=0",
    ], sections=files)
    assert len(result.losses) == 2 and all(torch.isfinite(torch.tensor(list(result.losses.values()))))
    assert "the predictor (0.00B parameters, from the model section) starts from random weights" in caplog.text
    config = make_config(load_plugins(PLUGIN), "run", [], files, ["model.flavor=tiny"])
    assert len(build_predictor(config.model, TINY).transformer_blocks) == 2


def _mindspeed_feature_store(folder: Path, samples: int) -> None:
    """MindSpeed-MM's feature layout: data.jsonl lines naming features/N.pt, each with the normalized latents of a
    9 × 32 × 48 clip and its padded prompt embeddings and mask."""
    (folder / "features").mkdir(parents=True)
    lines = []
    for n in range(samples):
        mask = torch.zeros(TINY.text_len, dtype=torch.long)
        mask[: 5 + n] = 1
        torch.save({"video": torch.randn(8, 3, 4, 6, dtype=torch.bfloat16),
                    "prompt_ids": torch.randn(TINY.text_len, TINY.predictor["caption_channels"]) * mask[:, None],
                    "prompt_mask": mask}, folder / "features" / f"{n}.pt")
        lines.append(json.dumps({"file": f"features/{n}.pt", "cap": f"caption {n}"}))
    (folder / "data.jsonl").write_text("\n".join(lines))


def test_the_a3_feature_files_train_from_a_mindspeed_mm_feature_store(tmp_path, caplog):
    store = tmp_path / "sora_features"
    _mindspeed_feature_store(store, samples=3)
    model = _tiny_model(MINDSPEED / "t2v_A3/pretrain_t2v_model.json")
    data = json.loads((MINDSPEED / "t2v_A3/data_feature.json").read_text())
    data["dataset_param"]["basic_parameters"].update(data_path=str(store / "data.jsonl"), data_folder=str(store))
    data["dataset_param"]["tokenizer_config"].update(from_pretrained=None, model_max_length=TINY.text_len)
    data["dataloader_param"]["num_workers"] = 0
    files = {"model": tmp_path / "model.json", "data": tmp_path / "data.json"}
    files["model"].write_text(json.dumps(model))
    files["data"].write_text(json.dumps(data))
    result = run_training(PLUGIN, tmp_path / "run", [
        "model.flavor=tiny", "training.train_iters=2", "training.micro_batch_size=1", "training.global_batch_size=1",
        "training.device=cpu", "logging.progress_bar=false", "logging.tensorboard=false", "training.save_interval=0",
    ], sections=files)
    assert len(result.losses) == 2 and all(torch.isfinite(torch.tensor(list(result.losses.values()))))
    assert "model.load_video_features, model.load_text_features" in caplog.text


def test_an_architecture_that_differs_from_the_checkpoint_is_one_error_naming_the_key(tmp_path):
    files = _tiny_files(tmp_path)
    config = make_config(load_plugins(PLUGIN), "run", [], files, ["model.flavor=tiny"])
    build_predictor(config.model, TINY).save_pretrained(tmp_path / "transformer")
    wrong = make_config(load_plugins(PLUGIN), "run", [], _tiny_files(tmp_path, num_layers=3),
                        ["model.flavor=tiny", f"model.predictor.from_pretrained={tmp_path / 'transformer'}"])
    with pytest.raises(ConfigError, match=r"model.predictor.num_layers is 3, .*config.json has num_layers 2$"):
        build_predictor(wrong.model, TINY)


def test_load_of_a_mindspeed_mm_checkpoint_gives_the_release_weights(tmp_path):
    # Megatron's layout (TP 2, PP 2) as hf_to_mm writes it,
    files = _tiny_files(tmp_path)
    config = make_config(load_plugins(PLUGIN), "run", [], files, ["model.flavor=tiny"])
    release = build_predictor(config.model, TINY)
    release.save_pretrained(tmp_path / "transformer")
    ckpt = tmp_path / "mm_path"
    assert convert(["OpenSoraPlanConverter", "hf_to_mm", "--cfg.source_path", str(tmp_path / "transformer"),
                    "--cfg.target_path", str(ckpt), "--cfg.target_parallel_config.tp_size", "2",
                    "--cfg.target_parallel_config.pp_layers", "[1,1]"]) == 0
    # and the same weights as MindSpeed-MM's FSDP2 training saves them (DCP)
    assert convert(["OpenSoraPlanConverter", "mm_to_dcp", "--cfg.source_path", str(ckpt), "--cfg.target_path",
                    str(tmp_path / "dcp")]) == 0
    expected = release.state_dict()
    for checkpoint in (ckpt, tmp_path / "dcp"):
        loaded = build_model(make_config(load_plugins(PLUGIN), "run", [], files,
                                         ["model.flavor=tiny", f"model.from_pretrained={checkpoint}"]).model)
        for name, tensor in loaded.predictor.state_dict().items():
            torch.testing.assert_close(tensor, expected[name], rtol=0, atol=0, msg=name)


def test_the_inference_model_json_generates_with_its_prompt_file_steps_and_size(tmp_path, capsys, restored_logging):
    files = _tiny_files(tmp_path)
    config = make_config(load_plugins(PLUGIN), "run", [], files, ["model.flavor=tiny"])
    release = build_predictor(config.model, TINY)
    weights = tmp_path / "sparsedit_mm.pth"  # MindSpeed-MM's names, as its predictor.from_pretrained holds them
    torch.save({name: tensor for name, tensor in RELEASE_TO_MM.to_mm(TensorSource(
        {k: v.to("meta") for k, v in release.state_dict().items()}, release.state_dict().__getitem__, "tiny")).items()},
        weights)
    model = _tiny_model(MINDSPEED / "t2v/inference_t2v_model.json")
    (tmp_path / "prompts.txt").write_text("a red circle\na blue square\n")
    model["predictor"].update(from_pretrained=str(weights), dtype="fp32")
    model["diffusion"]["num_inference_steps"] = 2
    model["tokenizer"].update(from_pretrained=None, model_max_length=TINY.text_len)
    model["pipeline_config"]["input_size"] = [9, 32, 48]
    model.update(prompt=str(tmp_path / "prompts.txt"), save_path=str(tmp_path / "samples"))
    (tmp_path / "inference.json").write_text(json.dumps(model))
    assert mm(["infer", "--plugin", "opensoraplan1_3", "--model", str(tmp_path / "inference.json"),
               "model.flavor=tiny", "training.device=cpu"]) == 0
    out, err = capsys.readouterr()
    assert "model.pipeline_class" in err and "model.use_prompt_preprocess" in err
    assert f"wrote {tmp_path / 'samples'}/opensoraplan1_3_0.mp4, {tmp_path / 'samples'}/opensoraplan1_3_1.mp4: " \
           f"9 frames of 48x32 from {weights}" in out


def test_mindspeed_module_paths_in_fsdp2_patterns_name_the_blocks():
    assert with_aliases(["predictor.videodit_sparse_blocks.{*}", "ae", "text_encoder"], MINDSPEED_MODULES) == [
        "predictor.transformer_blocks.{*}", "ae", "text_encoder"]
