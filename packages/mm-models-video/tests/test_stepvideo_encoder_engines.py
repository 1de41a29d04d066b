"""stepvideo with the encoder engines: interleaved offload, encoder-DP and VAE-CP train exactly as encoding every
clip on every rank does (T2V and TI2V)."""

from __future__ import annotations

import pytest
from stepvideo_testing import QUIET, stepvideo_parallel_run

# Two steps of two single-clip micro-batches: offload windows of 3 cross a step boundary.
RUN = [*QUIET, "training.micro_batch_size=1", "training.global_batch_size=2", "training.train_iters=2",
       "training.lr_warmup_iters=0", "training.save_interval=0"]
CP = ["parallel.cp.size=2", "parallel.cp.mode=ulysses"]
# Two 17-frame chunks: VAE-CP gives each rank a whole chunk (one chunk: its frames are split over the ranks).
TWO_CHUNKS = ["data.dataset_param.num_frames=34"]


def test_offloaded_text_encoders_train_like_encoding_every_step(mm_train) -> None:
    every = mm_train(["stepvideo"], *RUN)
    offloaded = mm_train(["stepvideo"], *RUN, "model.encoder_offload_interval=3")
    assert offloaded.losses == every.losses


@pytest.mark.slow
def test_ti2v_offload_and_sampled_latents_train_like_encoding_every_step(mm_train) -> None:
    # The posterior sample and the first frame's noise come from each clip's seed, not from the RNG's state.
    ti2v = [*RUN, "model.task=i2v", "model.ae.do_sample=true"]
    assert mm_train(["stepvideo"], *ti2v, "model.encoder_offload_interval=2").losses == \
        mm_train(["stepvideo"], *ti2v).losses


@pytest.fixture(scope="module")
def whole_cp(tmp_path_factory) -> dict:
    return stepvideo_parallel_run(2, tmp_path_factory.mktemp("whole"), *CP)


def assert_trains_alike(tmp_path, base: list[str], engines: list[str], whole: dict | None = None) -> None:
    """2 gloo ranks with ``base`` and ``engines`` give the losses and grad norms of ``base`` alone (``whole``)."""
    whole = whole or stepvideo_parallel_run(2, tmp_path / "whole", *base)
    run = stepvideo_parallel_run(2, tmp_path / "engines", *base, *engines)
    assert run["loss"] == pytest.approx(whole["loss"], rel=1e-5)
    assert run["grad_norm"] == pytest.approx(whole["grad_norm"], rel=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("engines", [
    ["model.enable_encoder_dp=true"],
    ["model.enable_encoder_dp=true", "model.encoder_offload_interval=2"],
    ["model.ae.vae_cp_size=2"],
], ids=["encoder-dp", "encoder-dp-offload", "vae-cp-split-chunk"])
def test_context_parallel_encoders_train_like_every_rank_encoding(whole_cp, tmp_path, engines: list[str]) -> None:
    assert_trains_alike(tmp_path, CP, engines, whole_cp)


@pytest.mark.slow
def test_vae_cp_of_whole_chunks_trains_like_the_whole_encode(tmp_path) -> None:
    assert_trains_alike(tmp_path, [*CP, *TWO_CHUNKS], ["model.ae.vae_cp_size=2"])


@pytest.mark.slow
def test_ti2v_encoder_dp_trains_like_every_rank_encoding(tmp_path) -> None:
    assert_trains_alike(tmp_path, [*CP, "model.task=i2v", "model.ae.do_sample=true"], ["model.enable_encoder_dp=true"])


@pytest.mark.slow
def test_tensor_parallel_encoder_dp_trains_like_every_rank_encoding(tmp_path) -> None:
    assert_trains_alike(tmp_path, ["parallel.tp.size=2"], ["model.enable_encoder_dp=true"])


@pytest.mark.slow
def test_fsdp2_leaves_the_offloaded_encoders_whole(tmp_path) -> None:
    assert_trains_alike(tmp_path, ["parallel.fsdp2.enable=true"], ["model.encoder_offload_interval=2"])
