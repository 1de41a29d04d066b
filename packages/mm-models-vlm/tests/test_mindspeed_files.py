"""MindSpeed-MM's own Qwen2.5-VL files run unchanged: model.json, data.json, fsdp2_config.yaml, launch flags,
a model.json's architecture, and --load of a MindSpeed-MM checkpoint."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
from safetensors.torch import load_file
from transformers import Qwen2_5_VLConfig

from mm_convert.cli import main as convert
from mm_core.cli import main as mm
from mm_core.errors import ConfigError
from mm_core.plugins import load_plugins, make_config
from mm_core.testing import launch_script_flags, run_training
from mm_models_vlm.qwen2_5_vl import model_json
from mm_models_vlm.qwen2_5_vl.build import build_model
from mm_models_vlm.qwen2_5_vl.synthetic import make_shapes_dataset

MINDSPEED = Path(__file__).resolve().parents[3] / "examples" / "qwen2_5_vl" / "mindspeed-mm"
PLUGIN = ["qwen2_5_vl"]


def test_the_launch_script_with_its_model_data_and_fsdp2_files_is_a_valid_run(capsys, tmp_path, restored_logging):
    fsdp2 = ["--fsdp2-config", str(MINDSPEED / "fsdp2_config.yaml")]
    flags = launch_script_flags(MINDSPEED / "finetune_qwen2_5_vl_3b.sh", MM_DATA=str(MINDSPEED / "data_3b.json"),
                   MM_MODEL=str(MINDSPEED / "model_3b.json"), SAVE_PATH=str(tmp_path / "save"), GBS="32")
    assert mm(["config", "--plugin", "qwen2_5_vl", *flags, *fsdp2]) == 0
    out, err = capsys.readouterr()
    assert "Traceback" not in err and "error" not in err
    for named in ("--use-fused-rmsnorm: accepted and ignored", "--mm-tool ./mindspeed_mm/tools/tools.json",
                  "model.text_decoder.use_fused_rotary_pos_emb", "data.dataloader_param.sampler_type"):
        assert named in err, named
    assert "model.patch" in err and "patch:" not in out
    assert "from_pretrained: ckpt/mm_path/Qwen2.5-VL-3B-Instruct" in out
    assert "cutoff_len: 1024" in out and "lr_warmup_fraction: 0.1" in out and "global_batch_size: 32" in out


def _mindspeed_files(tmp_path: Path, tiny_dir: Path, layers: int) -> dict[str, Path]:
    """MindSpeed-MM-format model.json (the tiny architecture with ``layers`` LLM layers), data.json over a generated
    mllm_format set with one malformed record, and the real fsdp2_config.yaml."""
    model = json.loads((MINDSPEED / "model_3b.json").read_text())
    tiny = Qwen2_5_VLConfig.from_pretrained(tiny_dir)
    for dotted, (part, key) in model_json.ARCHITECTURE.items():
        *parents, name = dotted.split(".")
        node = model
        for parent in parents:
            node = node.setdefault(parent, {})
        node[name] = model_json.architecture_value(tiny, part, key)
    model["text_decoder"].update(num_layers=layers, pipeline_num_layers=[layers])
    model["image_encoder"]["vision_encoder"]["pipeline_num_layers"] = [tiny.vision_config.depth]
    dataset = make_shapes_dataset(tmp_path / "shapes", num_samples=8)
    records = json.loads(dataset.read_text())
    records.insert(3, {"messages": [{"role": "user", "content": "only a question"}]})
    dataset.write_text(json.dumps(records))
    data = json.loads((MINDSPEED / "data_3b.json").read_text())
    data["dataset_param"]["preprocess_parameters"]["model_name_or_path"] = str(tiny_dir)
    data["dataset_param"]["basic_parameters"].update(dataset=str(dataset), dataset_dir=str(dataset.parent),
                                                     cache_dir=str(tmp_path / "cache"))
    files = {"model": tmp_path / "model.json", "data": tmp_path / "data.json"}
    files["model"].write_text(json.dumps(model))
    files["data"].write_text(json.dumps(data))
    return {**files, "parallel.fsdp2": MINDSPEED / "fsdp2_config.yaml"}


def test_a_model_json_architecture_builds_that_model_and_trains_with_the_real_fsdp2_yaml(
        tmp_path, tiny_dir, caplog):
    files = _mindspeed_files(tmp_path, tiny_dir, layers=3)
    config = make_config(load_plugins(PLUGIN), "run", [], files, ["training.device=cpu"])
    model = build_model(config)
    assert len(model.model.language_model.layers) == 3
    assert "the model.json architecture (0.00B parameters) starts from random weights" in caplog.text
    result = run_training(PLUGIN, tmp_path / "run", ["training.train_iters=2", "training.micro_batch_size=2",
                                                     "training.global_batch_size=2", "training.bf16=false",
                                                     "training.device=cpu", "logging.progress_bar=false",
                                                     "logging.tensorboard=false"], sections=files)
    assert len(result.losses) == 2 and all(torch.isfinite(torch.tensor(list(result.losses.values()))))
    assert "skipped 1 malformed record(s)" in caplog.text


def test_an_architecture_that_differs_from_the_checkpoint_is_one_error_naming_the_key(tmp_path, tiny_dir):
    files = _mindspeed_files(tmp_path, tiny_dir, layers=3)
    config = make_config(load_plugins(PLUGIN), "run", [], files, [f"model.from_pretrained={tiny_dir}"])
    with pytest.raises(ConfigError, match=r"model.text_decoder.num_layers is 3, .*config.json has 2$"):
        build_model(config)


@pytest.mark.parametrize("canonical", ["false", "true"])
def test_load_of_a_mindspeed_mm_checkpoint_gives_the_hugging_face_weights(tmp_path, tiny_dir, capsys, canonical):
    # Fused q/k/v and gate/up, or apart (enable_canonical_hf_struct): --load reads either.
    ckpt = tmp_path / "mm_path"
    assert convert(["Qwen2_5_VLConverter", "hf_to_mm", "--cfg.mm_dir", str(ckpt), "--cfg.hf_config.hf_dir",
                    str(tiny_dir), "--cfg.parallel_config.llm_pp_layers", "[[1,1]]",
                    "--cfg.parallel_config.vit_pp_layers", "[[2,0]]", "--cfg.parallel_config.tp_size", "2",
                    "--cfg.common_model_config.enable_canonical_hf_struct", canonical]) == 0
    files = _mindspeed_files(tmp_path, tiny_dir, layers=2)
    config = make_config(load_plugins(PLUGIN), "run", [], files, [f"model.from_pretrained={ckpt}"])
    loaded, reference = build_model(config), build_model(make_config(load_plugins(PLUGIN), "run", [], {},
                                                                     [f"model.from_pretrained={tiny_dir}"]))
    expected = reference.state_dict()
    for name, tensor in loaded.state_dict().items():
        torch.testing.assert_close(tensor, expected[name], msg=name)


def test_load_of_a_mindspeed_mm_fsdp2_checkpoint_gives_the_hugging_face_weights(tmp_path, tiny_dir):
    # MindSpeed-MM's FSDP2 save (GenericDCPConverter's layout: model.<Hugging Face name>, in release/).
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.save({"model": load_file(tiny_dir / "model.safetensors")}, checkpoint_id=str(tmp_path / "save" / "release"),
                 no_dist=True)
    files = _mindspeed_files(tmp_path, tiny_dir, layers=2)
    config = make_config(load_plugins(PLUGIN), "run", [], files, [f"model.from_pretrained={tmp_path / 'save'}"])
    loaded, reference = build_model(config), build_model(make_config(load_plugins(PLUGIN), "run", [], {},
                                                                     [f"model.from_pretrained={tiny_dir}"]))
    expected = reference.state_dict()
    for name, tensor in loaded.state_dict().items():
        torch.testing.assert_close(tensor, expected[name], msg=name)
