"""MindSpeed-MM's OpenSoraPlan 1.3 inference launch scripts run under ``mm infer``: their flags (SORA_ARGS) and
model.json are a valid config, the ignored ones named; the i2v file's ``pipeline_config.model_type`` sets the task."""

from __future__ import annotations

from pathlib import Path

import pytest

from mm_core.cli import main as mm
from mm_core.errors import ConfigError
from mm_core.plugins import load_plugins, make_config
from mm_core.testing import launch_script_flags
from mm_models_video.opensoraplan1_3.mindspeed import inference_model
from mm_models_video.opensoraplan1_3.schema import check_model

MINDSPEED = Path(__file__).resolve().parents[3] / "examples" / "opensoraplan1_3" / "mindspeed-mm"
INFERENCE = {task: MINDSPEED / task / f"inference_{task}_model.json" for task in ("t2v", "i2v")}


@pytest.mark.parametrize("task", ["t2v", "i2v"])
def test_the_inference_script_and_its_model_json_are_a_valid_config(task, capsys, restored_logging):
    script = MINDSPEED / task / f"inference_{task}.sh"
    assert "$(which mm) infer --plugin opensoraplan1_3 $MM_ARGS $SORA_ARGS" in script.read_text()
    flags = launch_script_flags(script, MM_MODEL=str(INFERENCE[task]), LOAD_PATH="ckpt", GBS="1")
    assert mm(["config", "--plugin", "opensoraplan1_3", *flags]) == 0
    out, err = capsys.readouterr()
    assert "Traceback" not in err and "error" not in err
    for named in ("--fp16: accepted and ignored", "--no-save-optim", "--distributed-timeout-minutes 20",
                  "model.pipeline_config.use_attention_mask", "model.frame_interval", "model.pipeline_class"):
        assert named in err, named
    assert "\n  from_pretrained: ckpt\n" in out


def test_the_i2v_model_json_runs_the_i2v_model_unless_the_task_says_otherwise():
    plugins = load_plugins(["opensoraplan1_3"])
    config = make_config(plugins, "infer", [], {"model": INFERENCE["i2v"]}, [])
    model = inference_model(config)
    assert model.task == "i2v"
    check_model(model)
    t2v = make_config(plugins, "infer", [], {"model": INFERENCE["i2v"]}, ["model.task=t2v"])
    with pytest.raises(ConfigError, match="model.pipeline_config.model_type 'i2v' needs model.task=i2v"):
        check_model(inference_model(t2v))
