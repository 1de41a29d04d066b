"""hf_internvl: transformers' InternVL through mm — training, the model hub, the FSDP2 plan and config."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from mm_hf_internvl.hub import InternVLForTraining, load_model

from mm_core import ConfigError
from mm_core.plugins import load_plugins, make_config
from mm_core.testing import spawn_training
from mm_parallel.fsdp2 import resolve

PLUGIN = "mm_hf_internvl.plugin"  # the module path works installed or not; installed, `hf_internvl` works too
EXAMPLE = Path(__file__).resolve().parents[1]
QUICK = ["logging.progress_bar=false", "training.save_interval=0"]


def _config(*overrides: str, sections: dict | None = None):
    return make_config(load_plugins([PLUGIN]), "run", [], sections, list(overrides))


def test_loss_goes_down(mm_train):
    result = mm_train([PLUGIN], *QUICK, "training.train_iters=20")
    losses = [result.losses[step] for step in sorted(result.losses)]
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5


def test_pretrained_folder_loads_the_same_model(tmp_path):
    built = load_model(_config().model)
    built.save_pretrained(tmp_path / "tiny")
    loaded = load_model(_config(f"model.from_pretrained={tmp_path / 'tiny'}").model)
    assert isinstance(loaded, InternVLForTraining)
    for (name, a), (_, b) in zip(built.state_dict().items(), loaded.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, msg=name)
    assert loaded.fsdp_modules() == ["model.vision_tower.encoder.layer.{*}", "model.language_model.layers.{*}"]


def test_hub_and_loader_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"model.model_id 'llava' is not in the model hub \(known: internvl\)"):
        load_model(_config("model.model_id=llava").model)
    with pytest.raises(ConfigError, match="model.from_pretrained: cannot read a config from"):
        load_model(_config(f"model.from_pretrained={tmp_path / 'missing'}").model)


def test_example_files_fit_the_model():
    config = _config(sections={"model": EXAMPLE / "model.json", "parallel.fsdp2": EXAMPLE / "fsdp2_config.yaml"})
    assert config.model.from_pretrained == "./ckpt/OpenGVLab/InternVL3-1B-hf" and config.model.dtype == "bf16"
    fsdp = config.parallel.fsdp2
    assert fsdp.enable and fsdp.param_dtype == "bf16"
    wrapped, _ = resolve(load_model(_config().model), fsdp)  # the tiny model has the real one's module tree
    assert [name for name, _ in wrapped] == [
        "model.vision_tower.encoder.layer.0", "model.vision_tower.encoder.layer.1",
        "model.language_model.layers.0", "model.language_model.layers.1",
    ]


@pytest.mark.slow
def test_fsdp2_two_processes_match_one(mm_train, tmp_path):
    run = [*QUICK, "training.train_iters=3"]
    single = mm_train([PLUGIN], *run, output_dir=tmp_path / "one").losses
    double = spawn_training(2, [PLUGIN], tmp_path / "two",
                            [*run, "training.micro_batch_size=4", "parallel.fsdp2.enable=true"])
    assert double == pytest.approx(single, rel=1e-4)
