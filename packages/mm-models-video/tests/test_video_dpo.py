"""video_dpo: the DPO loss and its gradient, the reference kept frozen and out of checkpoints, learning a preference."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader
from wan_testing import QUIET, SMALL_CLIPS

from mm_core import ContextParallelPlan, ParallelPlan
from mm_core.errors import CheckpointError, ConfigError, PluginError
from mm_core.plugins import load_plugins, make_config
from mm_models_video.video_dpo import plugin as dpo
from mm_models_video.video_dpo.histogram import build_histogram, pair_weight
from mm_models_video.video_dpo.loss import sigmoid_dpo
from mm_models_video.video_dpo.reference import add_reference, plan_with_reference, timesteps_of
from mm_models_video.video_dpo.synthetic import make_preference_set
from mm_models_video.wan2_1.build import build_model

DPO_RUN = [*SMALL_CLIPS, *QUIET, "training.micro_batch_size=2", "training.global_batch_size=2"]


def dpo_config(*overrides: str):
    """The effective config of wan2_1 + video_dpo with small clips."""
    return make_config(load_plugins(["wan2_1", "video_dpo"]), "run", [], None, [*SMALL_CLIPS, *QUIET, *overrides])


def test_sigmoid_dpo_matches_its_formula() -> None:
    ac, ar, rc, rr = (torch.tensor(v) for v in ([-1.0, -2.0], [-3.0, -1.5], [-1.5, -2.0], [-2.5, -1.0]))
    terms = sigmoid_dpo(ac, ar, rc, rr, beta=0.5, label_smoothing=0.1)
    delta = (ac - ar) - (rc - rr)
    expected = [-0.9 * math.log(1 / (1 + math.exp(-0.5 * d))) - 0.1 * math.log(1 / (1 + math.exp(0.5 * d)))
                for d in delta.tolist()]
    assert terms.losses.tolist() == pytest.approx(expected)
    assert terms.chosen_rewards.tolist() == pytest.approx([0.25, 0.0])
    assert terms.rejected_rewards.tolist() == pytest.approx([-0.25, -0.25])


def test_pair_weights_follow_the_histogram() -> None:
    scores = [0.05, 0.12, 0.15, 0.18, 0.95, 1.0]
    histogram = build_histogram(scores)
    assert histogram["total_num"] == 6 and histogram["max_num"] == 3 and histogram["bin_width"] == 0.1
    assert histogram["0.1-0.2"] == 3 and histogram["0.9-1.0"] == 2 and histogram["0.0-0.1"] == 1
    # p(0.15) = 3/6, p(1.0) = 2/6 (the top score counts in the last bin); beta defaults to max_num / total_num.
    assert pair_weight(1.0, 0.15, histogram, alpha=1.0, beta=None) == pytest.approx(0.5 / math.sqrt(2 / 6 * 3 / 6))
    assert pair_weight(0.15, 0.12, histogram, alpha=2.0, beta=0.5) == pytest.approx(1.0)
    assert pair_weight(0.95, 0.05, histogram, alpha=0.0, beta=None) == 1.0


def _pairs_batch(seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    videos = torch.randint(0, 256, (4, 3, 5, 16, 16), generator=generator, dtype=torch.uint8)
    return {"video": videos[:2], "video_rejected": videos[2:], "prompt": ["a red circle", "a blue square"],
            "index": torch.tensor([0, 1]), "epoch": torch.tensor([0, 0]), "noise_seeds": [11, 12],
            "score": torch.tensor([0.9, 0.8]), "score_rejected": torch.tensor([0.1, 0.3])}


def test_gradient_matches_the_hand_formula_as_beta_goes_to_zero() -> None:
    """With weights off: dL/dθ = β(1 - 2ε)/2 · loss_beta · mean_i t_i (∇mse_chosen_i - ∇mse_rejected_i)."""
    beta, smoothing, loss_beta = 1e-5, 0.1, 0.5
    config = dpo_config(f"training.dpo_beta={beta}", f"training.dpo_label_smoothing={smoothing}",
                        f"model.dpo.loss_beta={loss_beta}")
    torch.manual_seed(0)
    model = add_reference(build_model(config.model))
    with torch.no_grad():  # the actor moved away from the reference, as after some steps
        for param in model.predictor.parameters():
            param.add_(0.02 * torch.randn_like(param))
    reference_before = {k: v.clone() for k, v in model.reference.state_dict().items()}
    batch, runtime = _pairs_batch(), SimpleNamespace(config=config)
    output = dpo.forward_step(batch, model, runtime)
    loss, metrics = dpo.loss_func(output, batch, runtime)
    loss.backward()
    got = {n: p.grad.clone() for n, p in model.predictor.named_parameters()}
    model.zero_grad()

    plain = model(**dpo.doubled(batch))  # the plain composite: both clips of a pair share noise and timestep
    mse = (plain["pred"] - plain["target"]).pow(2).flatten(1).mean(1)
    t = output["timesteps"]
    hand = beta * (1 - 2 * smoothing) / 2 * loss_beta * (t * (mse[:2] - mse[2:])).mean()
    hand.backward()
    for name, param in model.predictor.named_parameters():
        assert (got[name] - param.grad).abs().max() <= 1e-3 * param.grad.abs().max(), name
    assert all(p.grad is None for p in model.reference.parameters())
    for key, value in model.reference.state_dict().items():
        assert torch.equal(value, reference_before[key])
    assert set(metrics) >= {"reward_accuracy", "reward_margin", "chosen_reward", "rejected_reward"}


def test_timesteps_are_those_the_composite_drew() -> None:
    config = dpo_config()
    model = add_reference(build_model(config.model))
    _, indices = model.diffusion.draw(torch.zeros(2, 4, 3, 4, 4), [11, 12])  # as the composite draws for its latents
    assert timesteps_of(model, [11, 12], torch.device("cpu")).tolist() == model.diffusion.timesteps[indices].tolist()


def test_the_reference_is_frozen_outside_the_state_dict_and_planned_like_the_actor() -> None:
    config = dpo_config()
    model = add_reference(build_model(config.model))
    assert not any(k.startswith("reference.") for k in model.state_dict())
    assert not any(p.requires_grad for p in model.reference.parameters())
    model.load_state_dict(model.state_dict())  # loading a checkpoint without the reference is accepted
    plan = ParallelPlan(fsdp_modules=["predictor.blocks.{*}"],
                        cp=ContextParallelPlan(split_inputs={"predictor.blocks.0": 1},
                                               gather_outputs={"predictor.proj_out": 1}))
    planned = plan_with_reference(plan, config)
    assert list(planned.fsdp_modules) == ["predictor.blocks.{*}", "reference.blocks.{*}"]
    assert planned.cp.split_inputs == {"predictor.blocks.0": 1, "reference.blocks.0": 1}
    assert planned.cp.gather_outputs == {"predictor.proj_out": 1, "reference.proj_out": 1}
    with pytest.raises(ConfigError, match="parallel.pp.size 2: video_dpo runs with FSDP2"):
        plan_with_reference(plan, dpo_config("parallel.pp.size=2"))


def test_bad_settings_are_one_clear_error(mm_train) -> None:
    with pytest.raises(ConfigError, match="set model.dpo.histogram_path"):
        mm_train(["wan2_1", "video_dpo"], *DPO_RUN, "model.dpo.weight_alpha=1.0", "training.train_iters=1")
    with pytest.raises(ConfigError, match="dpo_label_smoothing must be between 0 and 0.5"):
        mm_train(["wan2_1", "video_dpo"], *DPO_RUN, "training.dpo_label_smoothing=0.7", "training.train_iters=1")
    with pytest.raises(PluginError, match="no plugin below video_dpo answers datasets_provider: video_dpo stacks"):
        mm_train(["video_dpo"], "training.train_iters=1")


TINY_CLIPS = ["data.dataset_param.num_frames=5", "data.dataset_param.max_height=16", "data.dataset_param.max_width=16"]


def test_learns_to_prefer_smooth_clips_and_checkpoints_only_the_actor(mm_train) -> None:
    histogram = make_preference_set(5, 16, 16) / "video_score_histogram.json"
    result = mm_train(["wan2_1", "video_dpo"], *QUIET, *TINY_CLIPS, "training.train_iters=8",
                      "training.save_interval=8", "training.lr=2e-3", "model.dpo.weight_alpha=1.0",
                      f"model.dpo.histogram_path={histogram}")
    lines = [json.loads(line) for line in (result.output_dir / "metrics.jsonl").read_text().splitlines()]
    accuracy = [line["reward_accuracy"] for line in lines]
    assert accuracy[0] == 0 and sum(accuracy[-4:]) / 4 >= 0.75 and lines[-1]["reward_margin"] > 0.1
    keys = FileSystemReader(str(result.checkpoint)).read_metadata().state_dict_metadata
    assert any(k.startswith("model.predictor.") for k in keys)
    assert not any(".reference." in k or k.startswith("model.reference") for k in keys)


def test_training_load_starts_actor_and_reference_from_a_checkpoint(tmp_path) -> None:
    config = dpo_config(f"training.load={tmp_path}")
    trained = build_model(config.model)
    with torch.no_grad():
        for param in trained.predictor.parameters():
            param.add_(1.0)
    dcp.save({"model": trained.state_dict()}, checkpoint_id=str(tmp_path / "checkpoints" / "step_00000010"),
             no_dist=True)
    hook = dpo.model_provider(config, None)
    next(hook)
    with pytest.raises(StopIteration) as built:
        hook.send(build_model(config.model))  # what the model plugin's model_provider returned
    model = built.value.value
    for name, value in trained.predictor.state_dict().items():
        assert torch.equal(model.predictor.state_dict()[name], value)
        assert torch.equal(model.reference.state_dict()[name], value)
    with pytest.raises(CheckpointError, match="training.load .* is neither an mm checkpoint"):
        dpo.start_checkpoint(tmp_path / "nothing")


@pytest.mark.slow
def test_stacks_on_stepvideo(mm_train) -> None:
    result = mm_train(["stepvideo", "video_dpo"], *QUIET, "training.train_iters=3", "training.save_interval=3")
    lines = [json.loads(line) for line in (result.output_dir / "metrics.jsonl").read_text().splitlines()]
    assert lines[0]["loss"] == pytest.approx(math.log(2)) and lines[0]["reward_margin"] == 0
    assert all(math.isfinite(line["loss"]) for line in lines) and lines[-1]["reward_margin"] != 0
    keys = FileSystemReader(str(result.checkpoint)).read_metadata().state_dict_metadata
    assert not any(k.startswith("model.reference") for k in keys)
