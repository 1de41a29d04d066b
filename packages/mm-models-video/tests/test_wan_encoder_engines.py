"""wan2_1 with the encoder engines: interleaved offload, encoder-DP and VAE-CP train exactly as encoding every
clip on every rank does."""

from __future__ import annotations

import pytest
from parallel_testing import SHORT_RUN, parallel_run

# Two steps of two micro-batches of one clip: offload windows of 3 cross a step boundary.
RUN = [*SHORT_RUN, "training.global_batch_size=2", "training.train_iters=2"]


def test_offloaded_text_encoder_trains_like_encoding_every_step(mm_train) -> None:
    every = mm_train(["wan2_1"], *RUN)
    offloaded = mm_train(["wan2_1"], *RUN, "model.encoder_offload_interval=3")
    assert offloaded.losses == every.losses


@pytest.mark.slow
def test_i2v_offload_trains_like_encoding_every_step(mm_train) -> None:
    i2v = [*RUN, "model.task=i2v"]
    assert mm_train(["wan2_1"], *i2v, "model.encoder_offload_interval=2").losses == mm_train(["wan2_1"], *i2v).losses


@pytest.mark.slow
@pytest.mark.parametrize("engines", [
    ["model.enable_encoder_dp=true"],
    ["model.enable_encoder_dp=true", "model.encoder_offload_interval=2"],
    ["model.ae.vae_cp_size=2"],
])
def test_context_parallel_encoders_train_like_every_rank_encoding(tmp_path, engines: list[str]) -> None:
    cp = ["parallel.cp.size=2", "parallel.cp.mode=ulysses"]
    whole = parallel_run(2, tmp_path / "whole", *cp)
    run = parallel_run(2, tmp_path / "engines", *cp, *engines)
    assert run["loss"] == pytest.approx(whole["loss"], rel=1e-5)
    assert run["grad_norm"] == pytest.approx(whole["grad_norm"], rel=1e-5)


@pytest.mark.slow
def test_tensor_parallel_encoder_dp_trains_like_every_rank_encoding(tmp_path) -> None:
    whole = parallel_run(2, tmp_path / "whole", "parallel.tp.size=2")
    run = parallel_run(2, tmp_path / "dp", "parallel.tp.size=2", "model.enable_encoder_dp=true")
    assert run["loss"] == pytest.approx(whole["loss"], rel=1e-5)


@pytest.mark.slow
def test_fsdp2_leaves_the_offloaded_encoders_whole(tmp_path) -> None:
    fsdp = ["parallel.fsdp2.enable=true"]
    whole = parallel_run(2, tmp_path / "whole", *fsdp)
    run = parallel_run(2, tmp_path / "offload", *fsdp, "model.encoder_offload_interval=2")
    assert run["loss"] == pytest.approx(whole["loss"], rel=1e-5)
