"""LoRA on qwen2_5_vl: the plugin's default decoder targets, the base model's first loss, adapters-only checkpoints,
exact resume, and exports merged (from_pretrained) or as peft adapters (PeftModel.from_pretrained)."""

from __future__ import annotations

import pytest
import torch
import torch.distributed.checkpoint as dcp
from peft import PeftModel
from transformers import Qwen2_5_VLForConditionalGeneration

from mm_convert.cli import main as convert
from mm_core import lora
from mm_core.checkpoint import load_model_state
from mm_core.testing import run_training, spawn_training
from mm_models_vlm.qwen2_5_vl.model import load_model

CONVERTER = "Qwen2_5_VLConverter"
RUN = ["training.device=cpu", "data.dataset_param.basic_parameters.preprocessing_num_workers=1",
       "training.save_interval=1", "logging.progress_bar=false"]
LORA = ["model.lora.rank=4", "model.lora.alpha=8"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """1 step without LoRA and 2 with, on the generated tiny model."""
    root = tmp_path_factory.mktemp("qwen_lora")
    base = run_training(["qwen2_5_vl"], root / "plain", [*RUN, "training.train_iters=1"])
    adapted = run_training(["qwen2_5_vl"], root / "lora", [*RUN, *LORA, "training.train_iters=2"])
    return root, base, adapted


def _logits(model: torch.nn.Module, processor) -> torch.Tensor:
    ids = processor.tokenizer("What shape is in the image?", return_tensors="pt").input_ids
    with torch.no_grad():
        return model(input_ids=ids).logits


def _adapter_model(run) -> torch.nn.Module:
    model = load_model(run.output_dir / "cache" / "tiny-qwen2_5_vl")
    load_model_state(run.checkpoint, model)
    return model.eval()


def test_first_loss_is_the_base_models_and_only_decoder_adapters_are_saved(runs):
    _, base, adapted = runs
    assert adapted.losses[1] == pytest.approx(base.losses[1], rel=1e-6)
    assert adapted.losses[2] != pytest.approx(adapted.losses[1], rel=1e-3)
    keys = dcp.FileSystemReader(str(adapted.checkpoint)).read_metadata().state_dict_metadata
    weights = [k for k in keys if k.startswith("model.")]
    assert weights and all(lora.is_adapter(k) and ".language_model.layers." in k for k in weights)
    layers = load_model(adapted.output_dir / "cache" / "tiny-qwen2_5_vl").config.text_config.num_hidden_layers
    assert len(weights) == layers * 7 * 2  # q, k, v, o, gate, up, down; A and B


def test_exports_merged_and_as_adapters_give_the_adapter_models_logits(runs, processor, tmp_path):
    _, _, adapted = runs
    expected = _logits(_adapter_model(adapted), processor)
    base = load_model(adapted.output_dir / "cache" / "tiny-qwen2_5_vl").eval()
    assert not torch.allclose(_logits(base, processor), expected)
    assert convert([CONVERTER, "export", "--cfg.source_path", str(adapted.output_dir),
                    "--cfg.target_path", str(tmp_path / "merged")]) == 0
    merged = Qwen2_5_VLForConditionalGeneration.from_pretrained(tmp_path / "merged", dtype=torch.float32).eval()
    torch.testing.assert_close(_logits(merged, processor), expected, rtol=1e-5, atol=1e-5)
    assert convert([CONVERTER, "export", "--cfg.source_path", str(adapted.output_dir),
                    "--cfg.target_path", str(tmp_path / "adapter"), "--cfg.lora", "adapter"]) == 0
    peft_model = PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    torch.testing.assert_close(_logits(peft_model, processor), expected, rtol=1e-5, atol=1e-5)


def test_export_of_a_run_without_lora_as_adapters_is_one_error(runs, tmp_path, capsys):
    _, base, _ = runs
    assert convert([CONVERTER, "export", "--cfg.source_path", str(base.output_dir),
                    "--cfg.target_path", str(tmp_path / "adapter"), "--cfg.lora", "adapter"]) == 2
    assert "is not of a LoRA run (model.lora.rank is 0)" in capsys.readouterr().err


@pytest.mark.slow
def test_resume_of_a_lora_run_is_exact(runs, tmp_path):
    _, _, adapted = runs
    split = [*RUN, *LORA, "training.lr_decay_iters=2"]
    first = run_training(["qwen2_5_vl"], tmp_path, [*split, "training.train_iters=1"]).losses
    second = run_training(["qwen2_5_vl"], tmp_path, [*split, "training.train_iters=2", "training.resume=true"])
    assert {**first, **second.losses} == adapted.losses


@pytest.mark.slow
def test_fsdp2_on_two_ranks_trains_lora_like_one_process(tmp_path):
    both = [*RUN, *LORA, "training.train_iters=2", "training.micro_batch_size=1", "training.global_batch_size=2"]
    one = run_training(["qwen2_5_vl"], tmp_path / "one", both).losses
    two = spawn_training(2, ["qwen2_5_vl"], tmp_path / "two", [*both, "parallel.fsdp2.enable=true"])
    assert two == pytest.approx(one, rel=1e-4)
