"""Loading, freezing by config, FSDP2 wrap patterns, and export to a Hugging Face directory."""

from __future__ import annotations

import re

import pytest
import torch
from transformers import Qwen2_5_VLForConditionalGeneration

from mm_core.checkpoint import load_model_state
from mm_core.config import wrap
from mm_core.errors import ConfigError
from mm_core.plugins import load_plugins, make_config
from mm_models_vlm.qwen2_5_vl import plugin
from mm_models_vlm.qwen2_5_vl.batch import collate_padded
from mm_models_vlm.qwen2_5_vl.dataset import ConversationDataset
from mm_models_vlm.qwen2_5_vl.export import export_hf, main
from mm_models_vlm.qwen2_5_vl.model import apply_freeze, load_model


def _trainable(model) -> set[str]:
    return {name.split(".")[1] if name.startswith("model.") else name.split(".")[0]
            for name, p in model.named_parameters() if p.requires_grad}


def test_freeze_flags_of_model_json(model):
    apply_freeze(model, wrap({"image_encoder": {"vision_encoder": {"freeze": True, "num_layers": 32},
                                                "vision_projector": {"freeze": False}}}))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert not any(n.startswith(("model.visual.blocks", "model.visual.patch_embed")) for n in trainable)
    assert any(n.startswith("model.visual.merger") for n in trainable)
    assert any(n.startswith("model.language_model") for n in trainable)
    apply_freeze(model, wrap({"text_decoder": {"freeze": True}, "image_encoder": {}}))
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        n for n in trainable if n.startswith("model.visual.merger")}


def test_freezing_everything_or_a_bad_flag_is_a_config_error(model):
    with pytest.raises(ConfigError, match="must be true or false"):
        apply_freeze(model, wrap({"text_decoder": {"freeze": "yes"}}))
    with pytest.raises(ConfigError, match="nothing would train"):
        apply_freeze(model, wrap({"text_decoder": {"freeze": True}, "image_encoder": {
            "vision_encoder": {"freeze": True}, "vision_projector": {"freeze": True}}}))


def test_fsdp_patterns_name_every_vision_block_and_decoder_layer(model):
    config = make_config(load_plugins(["qwen2_5_vl"]), "run", [], None, [])
    plan = plugin.parallel_plan(model=model, config=config)
    regexes = [re.compile(re.escape(p).replace(re.escape("{*}"), r"\d+") + "$") for p in plan.fsdp_modules]
    matched = {name for name, _ in model.named_modules() if any(r.match(name) for r in regexes)}
    assert matched == {f"model.visual.blocks.{i}" for i in range(len(model.model.visual.blocks))} | {
        f"model.language_model.layers.{i}" for i in range(len(model.model.language_model.layers))}


def test_bad_directory_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="no config.json"):
        load_model(tmp_path)


def test_train_then_export_gives_the_same_logits(mm_train, tmp_path, processor, encoder, settings, record,
                                                 image_files, capsys):
    result = mm_train(["qwen2_5_vl"], "training.train_iters=8", "training.save_interval=8",
                      "data.dataset_param.basic_parameters.preprocessing_num_workers=1")
    assert result.losses[8] < result.losses[1] - 0.5
    assert "export to Hugging Face" in capsys.readouterr().out

    out = tmp_path / "hf"
    assert main([str(result.checkpoint), str(out)]) == 0
    exported = Qwen2_5_VLForConditionalGeneration.from_pretrained(out, dtype=torch.float32).eval()
    ours = load_model(result.output_dir / "cache" / "tiny-qwen2_5_vl").eval()
    untrained = {k: v.clone() for k, v in ours.state_dict().items()}
    load_model_state(result.checkpoint, ours)
    item = ConversationDataset([encoder.encode(record("<image>What shape?", "A red circle.", images=image_files[:1]))],
                               processor, settings)[0]
    batch = collate_padded([item], processor.tokenizer.pad_token_id)
    with torch.no_grad():
        expected = plugin.forward_step(batch=batch, model=ours, runtime=None)
        got = plugin.forward_step(batch=batch, model=exported, runtime=None)
    torch.testing.assert_close(got, expected)
    assert not torch.equal(untrained["lm_head.weight"], ours.state_dict()["lm_head.weight"])
    assert (out / "tokenizer.json").is_file() and (out / "processor_config.json").is_file()
    assert export_hf(result.checkpoint, tmp_path / "again") == tmp_path / "again"
