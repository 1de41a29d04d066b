"""The fsdp2 section on one process: config loading, options, error messages, recompute without FSDP2, meta init."""

from __future__ import annotations

import re

import pytest
import torch
import workers

from mm_core.checkpoint import load_model_state
from mm_core.cli import main
from mm_core.errors import ConfigError
from mm_core.plan import ParallelPlan
from mm_core.plugins import load_plugins, make_config
from mm_core.testing import run_training, toy
from mm_parallel import plugin
from mm_parallel.fsdp2 import FSDP2_DEFAULTS

# The example of the seeds' migration guide, byte for byte (its lines end in tabs).
SEEDS_FSDP2_YAML = """\
sharding_size: auto\t
sub_modules_to_wrap:\t
  - "text_decoder.output_layer"\t
  - "text_decoder.embedding"\t
  - "text_decoder.rotary_pos_emb"\t
  - "text_decoder.decoder.layers.{*}"\t
param_dtype: "bf16"\t
reduce_dtype: "fp32"\t
cast_forward_inputs: True\t
ignored_modules:\t
  - "image_encoder"\t
recompute_modules:\t
  - "text_decoder.decoder.layers.{*}"\t
num_to_forward_prefetch: 2\t
num_to_backward_prefetch: 2
offload_to_cpu: False
"""

SEEDS_OPTIONS = [
    "sharding_size",
    "param_dtype",
    "reduce_dtype",
    "output_dtype",
    "cast_forward_inputs",
    "sub_modules_to_wrap",
    "ignored_modules",
    "recompute_modules",
    "use_reentrant",
    "reshard_after_forward",
    "offload_to_cpu",
    "pin_memory",
    "num_to_forward_prefetch",
    "num_to_backward_prefetch",
]


def test_the_section_has_every_option_of_the_seeds_and_is_off():
    section = plugin.default_config("run")["parallel"]["fsdp2"]
    assert sorted(section) == sorted(["enable", "recompute_mode", *SEEDS_OPTIONS])
    assert section["enable"] is False
    assert section["use_reentrant"] is True and section["num_to_backward_prefetch"] == 1
    assert section is not FSDP2_DEFAULTS


def test_the_seeds_fsdp2_config_yaml_loads_unchanged(tmp_path):
    path = tmp_path / "fsdp2_config.yaml"
    path.write_text(SEEDS_FSDP2_YAML)
    config = make_config(load_plugins([toy]), sections={"parallel.fsdp2": path})
    fsdp = config.parallel.fsdp2
    assert fsdp.enable is True
    assert fsdp.sharding_size == "auto"
    assert fsdp.sub_modules_to_wrap[-1] == "text_decoder.decoder.layers.{*}"
    assert (fsdp.param_dtype, fsdp.reduce_dtype, fsdp.num_to_forward_prefetch) == ("bf16", "fp32", 2)


def test_mm_run_with_an_fsdp2_config_file(tmp_path, capsys):
    path = tmp_path / "fsdp2.yaml"
    path.write_text('sub_modules_to_wrap: ["blocks.{*}"]\nrecompute_modules: ["blocks.{0-1}"]\nuse_reentrant: false\n')
    code = main(["run", "--plugin", "mm_core.testing.toy", "--fsdp2-config", str(path),
                 f"training.output_dir={tmp_path}"])
    assert code == 0, capsys.readouterr().err
    assert "done: 6 steps" in capsys.readouterr().out


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "parallel.fsdp2.sub_modules_to_wrap=['block.{*}']",
            "parallel.fsdp2.sub_modules_to_wrap: pattern 'block.{*}' matches no module of ToyModel; "
            "modules with similar paths: blocks, blocks.0, ",
        ),
        ("parallel.fsdp2.recompute_modules=['blocks.{0-2}.mlp']", "pattern 'blocks.{0-2}.mlp' matches no module"),
        ("parallel.fsdp2.ignored_modules=[head]", "'head' has trainable parameters"),
        ("parallel.fsdp2.param_dtype=int8",
         "parallel.fsdp2.param_dtype must be one of bf16, bfloat16, fp16, float16, fp32, float32, got 'int8'"),
        ("parallel.fsdp2.num_to_forward_prefetch=-1", "num_to_forward_prefetch must be 0 or more"),
        ("parallel.fsdp2.sharding_size=half", "parallel.fsdp2.sharding_size must be auto or an integer, got 'half'"),
    ],
)
def test_a_wrong_option_is_one_config_error(tmp_path, override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        run_training([toy], tmp_path, [override])


def test_nothing_asked_leaves_the_model_to_mm_core(tmp_path):
    config = make_config(load_plugins([toy]))
    model = torch.nn.Linear(2, 2)
    assert plugin.parallelize_model(model=model, plan=ParallelPlan(), config=config, runtime=None) is None


def test_recompute_without_fsdp2_trains_the_same(tmp_path):
    recompute = [
        "parallel.fsdp2.enable=false",
        "parallel.fsdp2.recompute_modules=['blocks.{*}']",
        "parallel.fsdp2.use_reentrant=false",
    ]
    model, _ = workers.build(recompute)
    assert workers.tree(model)["recompute"] == ["blocks.0", "blocks.1", "blocks.2", "blocks.3"]
    assert workers.tree(model)["fsdp"] == []
    plain = run_training([toy], tmp_path / "plain").losses
    assert run_training([toy], tmp_path / "recompute", recompute).losses == pytest.approx(plain, rel=1e-6)


def test_a_meta_model_loads_a_dcp_checkpoint(tmp_path):
    run_training([toy], tmp_path)
    checkpoint = tmp_path / "checkpoints" / "step_00000006"
    model, _ = workers.build(["model.meta=true", f"model.pretrained={checkpoint}"])
    expected = toy.build(make_config(load_plugins([toy])).model)
    fresh = {n: p.clone() for n, p in expected.state_dict().items()}
    load_model_state(checkpoint, expected)
    for name, value in expected.state_dict().items():
        assert torch.equal(model.state_dict()[name], value), name
    assert not torch.equal(fresh["head.weight"], expected.state_dict()["head.weight"])
