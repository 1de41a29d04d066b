"""LoRA on wan2_1: the base model's first loss, adapters alone saved, exact resume, mm infer and both exports."""

from __future__ import annotations

import pytest
import torch
import torch.distributed.checkpoint as dcp
from diffusers import WanTransformer3DModel
from peft import PeftModel
from wan_testing import QUIET, SMALL_CLIPS, wan_config

from mm_convert.cli import main as convert
from mm_convert.export import ExportOptions, export_adapter
from mm_core import lora
from mm_core.config import load_file, wrap
from mm_core.plugins import load_plugins, make_config
from mm_core.runtime import create_runtime
from mm_core.testing import run_training, spawn_training
from mm_models_video import lora_targets
from mm_models_video.lora_targets import WAN_BLOCK
from mm_models_video.wan2_1.build import build_model
from mm_models_video.wan2_1.infer import generate, load_model

# wan2_1's parallel_plan gives no lora_targets yet: the tests name the default's T2V modules (no image keys).
TARGETS = f"model.lora.target_modules=[{','.join(t for t in WAN_BLOCK if '.add_' not in t)}]"
LORA = ["model.lora.rank=4", "model.lora.alpha=4", TARGETS]
RUN = [*SMALL_CLIPS, *QUIET, "training.device=cpu", "training.micro_batch_size=1", "training.global_batch_size=1",
       "training.lr=1e-2", "training.save_interval=1"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A pretrained tiny transformer folder; 1 step without LoRA, 2 with (the second with trained adapters)."""
    root = tmp_path_factory.mktemp("wan_lora")
    torch.manual_seed(0)
    build_model(wan_config().model).predictor.save_pretrained(root / "base")
    base = run_training(["wan2_1"], root / "plain", [*_on(root), "training.train_iters=1"])
    straight = run_training(["wan2_1"], root / "lora", [*_on(root), *LORA, "training.train_iters=2"])
    return root, base, straight


def _on(root) -> list[str]:
    """The training overrides of a run on the pretrained transformer in ``root``."""
    return [*RUN, f"model.predictor.from_pretrained={root / 'base'}"]


def _predict(predictor: torch.nn.Module) -> torch.Tensor:
    generator = torch.Generator().manual_seed(3)
    latents = torch.randn(1, predictor.config.in_channels, 2, 8, 8, generator=generator)
    text = torch.randn(1, 8, predictor.config.text_dim, generator=generator)
    with torch.no_grad():
        return predictor(latents, torch.tensor([500]), text, return_dict=False)[0]


def test_first_loss_is_the_base_models(runs):
    _, base, straight = runs
    assert straight.losses[1] == pytest.approx(base.losses[1], rel=1e-6)
    assert straight.losses[2] != pytest.approx(straight.losses[1], rel=1e-3)


def test_checkpoint_holds_the_adapters_only(runs):
    _, _, straight = runs
    keys = dcp.FileSystemReader(str(straight.checkpoint)).read_metadata().state_dict_metadata
    weights = [k for k in keys if k.startswith("model.") and "predictor" in k]
    assert weights and all(lora.is_adapter(k) for k in weights)
    assert len(weights) == 4 * 10 * 2  # the tiny flavor's 4 blocks, 10 projections (no I2V image keys), A and B


@pytest.mark.slow
def test_resume_of_a_lora_run_is_exact(runs, tmp_path):
    root, _, straight = runs
    split = [*_on(root), *LORA, "training.lr_decay_iters=2"]
    first = run_training(["wan2_1"], tmp_path, [*split, "training.train_iters=1"]).losses
    second = run_training(["wan2_1"], tmp_path, [*split, "training.train_iters=2", "training.resume=true"]).losses
    assert {**first, **second} == straight.losses


@pytest.mark.slow
def test_mm_infer_of_a_lora_checkpoint_makes_a_video(runs, tmp_path):
    _, _, straight = runs
    config = wan_config("training.device=cpu", "inference.steps=1", "inference.num_frames=1", "inference.height=16",
                        "inference.width=16", f"inference.output={tmp_path / 'out.mp4'}",
                        f"inference.checkpoint={straight.checkpoint}", task="infer")
    assert str(straight.checkpoint) in generate(config, create_runtime(config))
    assert (tmp_path / "out.mp4").stat().st_size > 0


def _adapter_model_output(checkpoint) -> torch.Tensor:
    return _predict(load_model(wrap(load_file(checkpoint / "config.yaml")["model"]), checkpoint).predictor)


def test_mm_infers_loading_puts_the_adapters_in_and_the_merged_export_equals_it(runs, tmp_path):
    _, _, straight = runs
    model_config = wrap(load_file(straight.checkpoint / "config.yaml")["model"])
    adapted = load_model(model_config, straight.checkpoint)  # what mm infer builds: no merge step
    assert lora.has_adapters(adapted)
    expected = _predict(adapted.predictor)
    assert not torch.equal(expected, _predict(build_model(model_config).predictor))
    assert convert(["Wan21Converter", "export", "--cfg.source_path", str(straight.output_dir),
                    "--cfg.target_path", str(tmp_path / "merged")]) == 0
    merged = WanTransformer3DModel.from_pretrained(tmp_path / "merged", subfolder="transformer").eval()
    torch.testing.assert_close(_predict(merged), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_adapter_export_loads_with_peft_and_gives_the_adapter_models_outputs(runs, tmp_path):
    root, _, straight = runs
    message = export_adapter(ExportOptions(source_path=straight.output_dir, target_path=tmp_path / "adapter",
                                           lora="adapter"))
    assert "predictor" in message
    peft_model = PeftModel.from_pretrained(WanTransformer3DModel.from_pretrained(root / "base"), tmp_path / "adapter")
    torch.testing.assert_close(_predict(peft_model.eval()), _adapter_model_output(straight.checkpoint),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("layout, batch", [("parallel.fsdp2.enable=true", 2), ("parallel.cp.size=2", 1)],
                         ids=["fsdp2", "cp"])
def test_two_ranks_train_lora_like_one_process(runs, tmp_path, layout, batch):
    root, _, _ = runs
    both = [*_on(root), *LORA, "training.train_iters=2", f"training.global_batch_size={batch}"]
    one = run_training(["wan2_1"], tmp_path / "one", both).losses
    two = spawn_training(2, ["wan2_1"], tmp_path / "two", [*both, layout])
    assert two == pytest.approx(one, rel=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("plugin, targets, unmatched", [
    ("wan2_1", lora_targets.WAN_BLOCK, 2), ("custom_dit", lora_targets.WAN_BLOCK, 2),
    ("stepvideo", lora_targets.STEPVIDEO_BLOCK, 0), ("opensoraplan1_3", lora_targets.OPENSORAPLAN_BLOCK, 0),
])
def test_default_targets_adapt_only_the_predictors_blocks(plugin, targets, unmatched):
    pm = load_plugins([plugin])
    config = make_config(pm, "run", overrides=["training.device=cpu"])
    model = pm.hook.model_provider(config=config, runtime=create_runtime(config))
    names = lora.resolve(model, targets, each=False)
    assert names and all(name.startswith("predictor.") for name in names)
    assert sum(not any(lora.matches(t, n) for n in names) for t in targets) == unmatched  # T2V has no image keys
