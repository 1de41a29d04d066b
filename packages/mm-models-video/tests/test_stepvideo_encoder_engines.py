"""stepvideo with the encoder engines: interleaved offload, encoder-DP and VAE-CP train exactly as encoding every
clip on every rank does (T2V and TI2V)."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from stepvideo_testing import QUIET, stepvideo_config, stepvideo_parallel_run

from mm_models_video.stepvideo.build import build_model
from mm_models_video.stepvideo.vae import FRAME_LEN

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


def _encode_on_two_ranks(rank: int, port: int, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    model = build_model(stepvideo_config("model.ae.do_sample=true").model)
    errors = {}
    for chunks in (1, 2):
        clip = torch.rand(2, 3, FRAME_LEN * chunks, 32, 32, generator=torch.Generator().manual_seed(chunks)) * 2 - 1
        model.vae_cp_group = None
        alone = model.encode_video(clip, seeds=[7, 8])
        model.vae_cp_group = dist.group.WORLD
        split = model.encode_video(clip, seeds=[7, 8])
        errors[chunks] = ((split - alone).abs().max() / alone.abs().max()).item()
    if rank == 0:
        Path(out).write_text(json.dumps(errors))
    dist.destroy_process_group()


@pytest.mark.slow
def test_vae_cp_latents_equal_the_single_device_encode(tmp_path) -> None:
    # One 17-frame chunk: its frames split over the 2 ranks; two chunks: a whole chunk per rank. The posterior
    # sample is drawn from each clip's seed, the same on every rank.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "errors.json"
    mp.start_processes(_encode_on_two_ranks, args=(port, str(out)), nprocs=2, join=True, start_method="fork")
    errors = json.loads(out.read_text())
    assert errors["1"] < 1e-5 and errors["2"] == 0.0
