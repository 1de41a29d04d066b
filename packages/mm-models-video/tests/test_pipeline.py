"""Pipeline-parallel wan2_1 (the tiny model's 4 blocks cut over 2 ranks), alone, with FSDP2 or with CP, trains as
one process does. Global batch 4 of micro-batches of 1: a pipeline runs 4 micro-batches a step, or 2 next to a
second data-parallel one (FSDP2), so 1F1B and interleaved 1F1B really pipeline.
"""

from __future__ import annotations

import shutil

import pytest
import torch
from parallel_testing import SHORT_RUN, parallel_run

from mm_core.testing import run_training

PP2 = ["parallel.pp.size=2"]
SAVE = ["training.save_interval=2", "training.keep_last=0"]


def test_split_forward_equals_the_diffusers_transformer(tiny_model) -> None:
    """embed → blocks → predict (the forward with and without PP) is diffusers' WanTransformer3DModel.forward."""
    torch.manual_seed(0)
    latents = torch.randn(2, tiny_model.ae.config.z_dim, 3, 4, 4)
    prompt_embeds = torch.randn(2, tiny_model.text_len, tiny_model.text_encoder.config.d_model)
    noise, indices = torch.randn_like(latents), torch.tensor([3, 500])
    out = tiny_model(latents=latents, prompt_embeds=prompt_embeds, noise=noise, timestep_indices=indices)
    noised, timesteps = tiny_model.diffusion.add_noise(latents, noise, indices)
    expected = tiny_model.predictor(noised, timesteps, prompt_embeds, return_dict=False)[0]
    torch.testing.assert_close(out["pred"], expected, rtol=0, atol=0)
    torch.testing.assert_close(out["target"], noise - latents, rtol=0, atol=0)
    assert out["tokens"] == 2 * 3 * 2 * 2


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> dict:
    return parallel_run(1, tmp_path_factory.mktemp("one"), *SAVE)


@pytest.fixture(scope="module")
def pp2(tmp_path_factory) -> tuple:
    run_dir = tmp_path_factory.mktemp("pp2")
    return run_dir, parallel_run(2, run_dir, *PP2, "parallel.pp.pipeline_num_layers=[1,3]", *SAVE)


def _assert_same(run: dict, single: dict) -> None:
    assert len(run["loss"]) == 3  # logged once per step
    assert run["loss"] == pytest.approx(single["loss"], rel=1e-5)
    assert run["grad_norm"] == pytest.approx(single["grad_norm"], rel=1e-5)


def test_1f1b_on_two_ranks_equals_one_process(single, pp2) -> None:
    _assert_same(pp2[1], single)


@pytest.mark.parametrize(
    ("world", "overrides"),
    [
        pytest.param(
            2, [*PP2, "parallel.pp.schedule=interleaved_1f1b", "parallel.pp.virtual_stages=2"], id="interleaved-pp2-v2"
        ),
    ],
)
def test_pipeline_training_equals_one_process(single, tmp_path, world, overrides) -> None:
    _assert_same(parallel_run(world, tmp_path, *overrides), single)


@pytest.mark.slow
def test_pipeline_with_fsdp2_equals_one_process(single, tmp_path) -> None:
    """pp=2 × dp_shard=2 on 4 ranks; the grad norm (and clipping) spans sharded and unsharded parameters."""
    _assert_same(parallel_run(4, tmp_path, *PP2, "parallel.fsdp2.enable=true"), single)


def test_pipeline_checkpoint_resumes_without_pipeline(single, pp2, tmp_path) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(pp2[0], run_dir)
    shutil.rmtree(run_dir / "checkpoints" / "step_00000003")
    result = run_training(["wan2_1"], run_dir, [*SHORT_RUN, *SAVE, "training.device=cpu", "training.resume=true"])
    assert result.losses == pytest.approx({3: single["loss"][2]}, rel=1e-5)


@pytest.mark.slow
def test_i2v_pipeline_equals_one_process(tmp_path) -> None:
    """I2V on pp=2: the first stage (with the CLIP and VAE encoders) embeds the image tokens into the carry's
    context and the mask + first-frame latents into its tokens; the second stage gets them through the carry."""
    expected = parallel_run(1, tmp_path / "one", "model.task=i2v")
    _assert_same(parallel_run(2, tmp_path / "pp", "model.task=i2v", *PP2, "parallel.pp.pipeline_num_layers=[1,3]"),
                 expected)


@pytest.mark.slow
def test_pipeline_with_context_parallelism_equals_one_process(tmp_path) -> None:
    """pp=2 × cp=2 (ring) on 4 ranks; 18 tokens per clip, padded to 20, travel between the stages as 2 shards."""
    wide = "data.dataset_param.max_width=48"
    expected = parallel_run(1, tmp_path / "one", wide)
    _assert_same(parallel_run(4, tmp_path / "pp", wide, *PP2, "parallel.cp.size=2", "parallel.cp.mode=ring"), expected)
