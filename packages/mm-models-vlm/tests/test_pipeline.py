"""Pipeline parallelism for Qwen2.5-VL: the parallel_plan's pre → layers → post equals forward_step (packed and
padded, padding to the pipeline's fixed length included), and 2 gloo processes with PP train like one process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import Qwen2_5_VLForConditionalGeneration

from mm_core.config import Config, wrap
from mm_core.errors import ConfigError
from mm_core.testing import run_training, spawn_training
from mm_models_vlm.qwen2_5_vl import plugin
from mm_models_vlm.qwen2_5_vl.batch import collate_padded
from mm_models_vlm.qwen2_5_vl.packing import collate_packed
from mm_models_vlm.qwen2_5_vl.pipeline import model_pipeline_num_layers
from mm_models_vlm.qwen2_5_vl.synthetic import make_shapes_dataset
from mm_models_vlm.qwen2_5_vl.tiny import tiny_config, tiny_processor
from mm_parallel.pipeline import pipeline_num_layers

# Packing on (the default); 4 micro-batches of 2 samples per step.
OVERRIDES = ["training.train_iters=3", "training.save_interval=0", "training.micro_batch_size=2",
             "training.global_batch_size=8", "training.clip_grad=1.0",
             "data.dataset_param.basic_parameters.cutoff_len=128",
             "data.dataset_param.basic_parameters.preprocessing_num_workers=1"]


def _through_plan(model, batch, packed):
    """``batch`` through the plugin's plan for a config with ``packed``, padded 37 tokens beyond its length."""
    basic = {"cutoff_len": batch.input_ids.shape[1] + 37, "packing": packed}
    config = wrap({"model": {}, "data": {"dataset_param": {"basic_parameters": basic}},
                   "training": {"micro_batch_size": 1}})
    plan = plugin.parallel_plan(model=model, config=config).pipeline
    carry = plan.pre(model, batch)
    assert carry[0].shape[1] == basic["cutoff_len"]
    for layer in model.model.language_model.layers:
        carry = plan.layer(layer, carry)
    return plan.post(model, carry, batch)


@pytest.mark.parametrize("packed", [True, False], ids=["packed", "padded"])
def test_pre_layers_post_equal_forward_step(model, items, processor, rope, packed):
    batch = collate_packed(items, rope) if packed else collate_padded(items, processor.tokenizer.pad_token_id)
    with torch.no_grad():
        expected = plugin.forward_step(batch=batch, model=model, runtime=None)
        hidden = _through_plan(model, batch, packed)
    assert hidden.head is model.lm_head
    torch.testing.assert_close(hidden.as_subclass(torch.Tensor), expected.as_subclass(torch.Tensor),
                               rtol=1e-5, atol=1e-5)
    loss, _ = plugin.loss_func(output=hidden, batch=batch, runtime=None)
    assert loss.item() == pytest.approx(plugin.loss_func(output=expected, batch=batch, runtime=None)[0].item())


def test_model_json_cuts_map_onto_pipeline_num_layers():
    """MindSpeed-MM's model.json keys: image_encoder.vision_encoder / text_decoder .pipeline_num_layers."""
    model = {"image_encoder": {"vision_encoder": {"pipeline_num_layers": [[32, 0]]}},
             "text_decoder": {"pipeline_num_layers": [[1, 35]]}}
    cuts = model_pipeline_num_layers(Config({"model": model}))
    assert cuts == {"vit": [[32, 0]], "llm": [[1, 35]]}
    assert model_pipeline_num_layers(Config({"model": {"image_encoder": {}, "text_decoder": {}}})) is None
    with pytest.raises(ConfigError, match="differs from the model section's"):
        pipeline_num_layers({"llm": [18, 18]}, cuts)


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> list[str]:
    """OVERRIDES, with a tiny Qwen2.5-VL of 4 LLM layers (room for pp=2 × 2 virtual stages, tied embeddings)
    and the shape images made once here (spawned ranks that each generate them race on the files)."""
    path = tmp_path_factory.mktemp("hf4") / "tiny4"
    data = make_shapes_dataset(path.parent / "data")
    processor = tiny_processor()
    config = tiny_config(processor)
    config.text_config.num_hidden_layers = 4
    config.text_config.layer_types = ["full_attention"] * 4
    torch.manual_seed(0)
    Qwen2_5_VLForConditionalGeneration(config).save_pretrained(path)
    processor.save_pretrained(path)
    assert json.loads((path / "config.json").read_text())["tie_word_embeddings"]
    return [*OVERRIDES, f"model.from_pretrained={path}", f"data.dataset_param.basic_parameters.dataset={data}",
            f"data.dataset_param.basic_parameters.dataset_dir={data.parent}"]


def _metrics(run_dir: Path) -> dict[str, list[float]]:
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in lines if "loss" in r]
    return {key: [r[key] for r in train] for key in ("loss", "grad_norm")}


@pytest.fixture(scope="module")
def single(base, tmp_path_factory) -> dict[str, list[float]]:
    run_dir = tmp_path_factory.mktemp("one")
    run_training(["qwen2_5_vl"], run_dir, ["training.device=cpu", *base])
    return _metrics(run_dir)


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param(["parallel.pp.size=2", "model.image_encoder.vision_encoder.pipeline_num_layers=[[2,0]]",
                      "model.text_decoder.pipeline_num_layers=[[1,3]]"], id="1f1b-model-json-cuts"),
        pytest.param(["parallel.pp.size=2", "parallel.pp.schedule=interleaved_1f1b", "parallel.pp.virtual_stages=2"],
                     id="interleaved-pp2-v2"),
    ],
)
def test_pipeline_trains_like_one_process(base, single, tmp_path, overrides):
    """Packed micro-batches with images; embed_tokens and lm_head tied across the first and last stage."""
    spawn_training(2, ["qwen2_5_vl"], tmp_path, [*base, *overrides])
    got = _metrics(tmp_path)
    assert len(got["loss"]) == 3
    for key in ("loss", "grad_norm"):
        assert got[key] == pytest.approx(single[key], rel=1e-5), key


@pytest.mark.slow
def test_pipeline_with_fsdp2_trains_like_one_process(base, single, tmp_path):
    """pp=2 × dp_shard=2: each stage sharded, the tied embedding's two copies summed shard by shard; decoder
    layers (called through pp_layer) and vision blocks recomputed."""
    recompute = "parallel.fsdp2.recompute_modules=['model.language_model.layers.{*}','model.visual.blocks.{*}']"
    spawn_training(4, ["qwen2_5_vl"], tmp_path,
                   [*base, "parallel.pp.size=2", "parallel.fsdp2.enable=true", recompute])
    got = _metrics(tmp_path)
    for key in ("loss", "grad_norm"):
        assert got[key] == pytest.approx(single[key], rel=1e-4), key


def test_vision_blocks_on_a_later_stage_are_one_clear_error(base, tmp_path):
    with pytest.raises(Exception, match=r"pipeline_num_layers.vit \[1, 1\] puts vit layers on stage\(s\) \[1\]"):
        spawn_training(2, ["qwen2_5_vl"], tmp_path,
                       [*base, "parallel.pp.size=2", "parallel.pp.pipeline_num_layers={vit: [1, 1], llm: [2, 2]}"])
