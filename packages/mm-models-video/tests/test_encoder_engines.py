"""Encoder-DP and interleaved encoder offload give the features of encoding every batch every step, with fewer
encodes; a checkpoint inside an offload window resumes exactly; settings that cannot work are one error."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import offload_toy
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from transformers import UMT5Config, UMT5EncoderModel
from wan_testing import wan_config

from mm_core.config import Config
from mm_core.data_iter import DataIterator
from mm_core.errors import ConfigError
from mm_core.testing import toy
from mm_models_video.encoder_engines import EncodedBatches, check_encoder_engines
from mm_models_video.encoders import TINY_UMT5
from mm_models_video.pretrained import fixed_init
from mm_models_video.wan2_1.build import build_model

STEPS = 8


def _batches() -> list[dict]:
    """Raw batches: a prompt's token ids (varying length) and its index."""
    generator = torch.Generator().manual_seed(0)
    return [{"input_ids": torch.randint(0, 128, (1, 5 + i % 3), generator=generator), "index": i}
            for i in range(STEPS)]


def _text_encoder() -> UMT5EncoderModel:
    return fixed_init(lambda: UMT5EncoderModel(UMT5Config(**TINY_UMT5)), torch.float32).eval()


class Counted:
    """The encode function of a composite: raw batch -> its prompt embeddings; counts its calls."""

    def __init__(self, encoder: UMT5EncoderModel) -> None:
        self.encoder, self.calls = encoder, 0

    @torch.no_grad()
    def __call__(self, batch: dict) -> dict:
        self.calls += 1
        return {"prompt_embeds": self.encoder(batch["input_ids"]).last_hidden_state, "index": batch["index"]}


def _encoder_dp_worker(rank: int, world: int, port: int, out: str, interval: int) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    encode = Counted(_text_encoder())
    data = DataIterator(_batches())
    engine = EncodedBatches(encode, torch.device("cpu"), dist.group.WORLD, interval, [encode.encoder],
                            ahead=data)
    served = [engine.next(lambda: next(data)) for _ in range(STEPS)]
    reference = Counted(_text_encoder())
    expected = [reference(batch) for batch in _batches()]
    report = {
        "calls": encode.calls,
        "windows": engine.windows,
        "reference_calls": reference.calls,
        "indices": [f["index"] for f in served],
        "error": max((f["prompt_embeds"] - e["prompt_embeds"]).abs().max().item() for f, e in zip(served, expected)),
        "position": data.state_dict()["position"],
    }
    gathered: list = [None] * world
    dist.all_gather_object(gathered, report)
    if rank == 0:
        Path(out).write_text(json.dumps(gathered))
    dist.destroy_process_group()


@pytest.mark.parametrize("interval", [1, 2])
def test_encoder_dp_on_two_ranks_gives_every_feature_with_half_the_encodes(tmp_path, interval: int) -> None:
    # With offload too (interval 2), each rank encodes 2 batches a window and the group trains 4 steps on them.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "report.json"
    mp.start_processes(_encoder_dp_worker, args=(2, port, str(out), interval), nprocs=2, join=True, start_method="fork")
    ranks = json.loads(out.read_text())
    for report in ranks:
        assert report["indices"] == list(range(STEPS))
        assert report["error"] == 0.0
        assert report["calls"] == STEPS // 2 and report["reference_calls"] == STEPS
        assert report["windows"] == STEPS // (2 * interval)
    # Rank 0 reads for the group; its checkpointed position is the last batch trained on, not the last one read.
    assert ranks[0]["position"] == STEPS


def _offload_run(interval: int, steps: range, state: dict | None = None) -> tuple[list[dict], dict, EncodedBatches]:
    data = DataIterator(_batches())
    if state is not None:
        data.load_state_dict(state)
    encoder = _text_encoder()
    engine = EncodedBatches(Counted(encoder), torch.device("cpu"), interval=interval, offload=[encoder],
                            ahead=data)
    served = [engine.next(lambda: next(data)) for _ in steps]
    return served, data.state_dict(), engine


def test_offload_serves_the_features_of_encoding_every_step_and_resumes_exactly() -> None:
    every, _, _ = _offload_run(1, range(STEPS))
    interleaved, _, engine = _offload_run(3, range(STEPS))
    assert engine.windows == 3 and engine.encode.calls == 9
    for got, want in zip(interleaved, every):
        assert got["index"] == want["index"]
        assert torch.equal(got["prompt_embeds"], want["prompt_embeds"])
    # A checkpoint after step 4 (inside the second window of 3) resumes at batch 4, not at 6 (read ahead).
    _, state, _ = _offload_run(3, range(4))
    assert state["position"] == 4
    resumed, _, _ = _offload_run(3, range(4, STEPS), state)
    assert [f["index"] for f in resumed] == list(range(4, STEPS))
    for got, want in zip(resumed, every[4:]):
        assert torch.equal(got["prompt_embeds"], want["prompt_embeds"])


@pytest.mark.parametrize(
    ("model", "parallel", "message"),
    [
        ({"ae": {"vae_cp_size": 2}}, {"pp": {"size": 2}}, "model.ae.vae_cp_size with parallel.pp.size=2"),
        ({"enable_encoder_dp": True}, {"pp": {"size": 2}}, "model.enable_encoder_dp with parallel.pp.size=2"),
        ({"encoder_offload_interval": 4}, {"pp": {"size": 2}}, "model.encoder_offload_interval with parallel.pp"),
        ({"ae": {"vae_cp_size": 2}, "enable_encoder_dp": True}, {}, "pick one"),
        ({"encoder_offload_interval": 0}, {}, "whole number of steps >= 1, got 0"),
        ({"ae": {"vae_cp_size": 4}}, {"cp": {"size": 2}}, "must divide parallel.cp.size=2"),
    ],
)
def test_what_cannot_work_is_one_error(model: dict, parallel: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        check_encoder_engines(Config(model), Config(parallel))


def test_what_can_work_passes() -> None:
    check_encoder_engines(Config({"ae": {"vae_cp_size": 2}, "encoder_offload_interval": 4}),
                          Config({"cp": {"size": 4}}))
    check_encoder_engines(Config({"enable_encoder_dp": True, "encoder_offload_interval": 2}),
                          Config({"cp": {"size": 2}, "tp": {"size": 2}}))


def _wan_batches(count: int) -> list[dict]:
    generator = torch.Generator().manual_seed(1)
    return [{"video": torch.randint(0, 256, (1, 3, 9, 32, 32), dtype=torch.uint8, generator=generator),
             "prompt": [f"a clip number {i}"], "noise_seeds": torch.tensor([100 + i])} for i in range(count)]


@pytest.mark.slow
def test_offload_losses_of_the_tiny_wan_equal_encoding_every_step() -> None:
    torch.manual_seed(0)
    model = build_model(wan_config().model)

    @torch.no_grad()
    def encode(batch: dict) -> dict:
        return {"latents": model.encode_video(batch["video"]), "prompt_embeds": model.encode_text(batch["prompt"]),
                "noise_seeds": batch["noise_seeds"]}

    def loss(out: dict) -> float:
        return torch.nn.functional.mse_loss(out["pred"].float(), out["target"].float()).item()

    batches = _wan_batches(4)
    with torch.no_grad():
        online = [loss(model(video=b["video"], prompt=b["prompt"], noise_seeds=b["noise_seeds"])) for b in batches]
        data = iter(batches)
        engine = EncodedBatches(encode, torch.device("cpu"), interval=2, offload=[model.text_encoder])
        offloaded = [loss(model(**engine.next(lambda: next(data)))) for _ in batches]
    assert offloaded == pytest.approx(online, rel=1e-6)
    assert engine.windows == 2


@pytest.mark.slow
def test_a_run_resumed_inside_an_offload_window_trains_like_a_straight_one(mm_train, tmp_path) -> None:
    # 4 micro-batches a step, windows of 3: the checkpoint after step 5 (20 batches trained) has read 21.
    plugins = [toy, offload_toy]
    every = mm_train(plugins, "model.encoder_offload_interval=1", "training.train_iters=10",
                     "training.save_interval=0", output_dir=tmp_path / "every")
    straight = mm_train(plugins, "training.train_iters=10", "training.save_interval=0",
                        output_dir=tmp_path / "straight")
    run = tmp_path / "resumed"
    first = mm_train(plugins, "training.train_iters=5", "training.lr_decay_iters=10", "training.save_interval=5",
                     output_dir=run)
    second = mm_train(plugins, "training.train_iters=10", "training.resume=true", "training.save_interval=0",
                      output_dir=run)
    assert straight.losses == every.losses
    assert {**first.losses, **second.losses} == straight.losses
