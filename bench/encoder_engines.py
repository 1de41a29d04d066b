"""Encoder engines of wan2_1: the encoder work per rank with and without encoder-DP, and the device memory that
interleaved offload frees.

    python bench/encoder_engines.py --tiny                 # 2 gloo ranks on the CPU, the tiny Wan2.1
    python bench/encoder_engines.py --flavor 1.3b --world 2  # 2 GPUs (NCCL), Wan2.1-1.3B at random weights

Each of ``--world`` ranks serves ``--steps`` batches of one clip (``--frames`` × ``--height`` × ``--width``) and
caption, all ranks of a context-parallel group sharing them:
- every rank: each rank encodes every batch (``WanT2V.features``), as without encoder-DP;
- encoder-DP: ``EncodedBatches`` over the group: rank 0 reads, each rank encodes one batch in ``world``.
It reports each rank's encode count and seconds (the median rank) and their ratio, and on a GPU the device memory
held by the model with its text encoder on the device against offloaded to the CPU (``offloaded()``), appending a
line to ``<results>/encoder_engines.jsonl``.
"""

from __future__ import annotations

import datetime
import json
import os
import shlex
import socket
import statistics
import sys
import time
from pathlib import Path

import common
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mm_core.plugins import load_plugins, make_config
from mm_models_video.encoder_engines import EncodedBatches
from mm_models_video.wan2_1.build import build_model


def _batches(args, steps: int) -> list[dict]:
    generator = torch.Generator().manual_seed(0)
    shape = (1, 3, args.frames, args.height, args.width)
    return [{"video": torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator),
             "prompt": [f"a moving shape, clip {i}"], "index": torch.tensor([i])} for i in range(steps)]


def _model(args, device: torch.device):
    config = make_config(load_plugins(["wan2_1"]), "run", [], None, [f"model.flavor={args.flavor}"])
    torch.manual_seed(0)
    return build_model(config.model).to(device).eval()


def _worker(rank: int, args, port: int, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(args.world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    device = common.device_of(args.device)
    if device.type != "cpu":
        device = torch.device(device.type, rank)
        torch.accelerator.set_device_index(rank)
    else:
        torch.set_num_threads(1)
    dist.init_process_group("gloo" if device.type == "cpu" else "nccl")
    model = _model(args, device)
    batches = _batches(args, args.steps)
    on_device = [{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in b.items()} for b in batches]
    with torch.no_grad():
        model.features(on_device[0])  # warm up (allocator, kernels)
        common.synchronize(device)
        start = time.perf_counter()
        for batch in on_device:
            model.features(batch)
        common.synchronize(device)
        every_s = time.perf_counter() - start
        stream = iter(batches)
        engine = EncodedBatches(model.features, device, dist.group.WORLD)
        dist.barrier()
        start = time.perf_counter()
        for _ in range(args.steps):
            engine.next(lambda: next(stream))
        common.synchronize(device)
        dp_s = time.perf_counter() - start
    report = {"every_s": every_s, "dp_s": dp_s, "dp_encodes": engine.encode_calls, "every_encodes": args.steps}
    gathered: list = [None] * args.world
    dist.all_gather_object(gathered, report)
    if rank == 0:
        Path(out).write_text(json.dumps(gathered))
    dist.destroy_process_group()


def offload_memory(args) -> dict | None:
    """The device memory (GiB) the model holds with its text encoder on the device and offloaded; None on the CPU."""
    device = common.device_of(args.device)
    if device.type == "cpu":
        return None
    common.release(device)
    model = _model(args, device)
    module = torch.get_device_module(device.type)
    resident = module.memory_allocated(device) / 2**30
    for part in model.offloaded():
        part.to("cpu")
    offloaded = module.memory_allocated(device) / 2**30
    return {"resident_gib": resident, "offloaded_gib": offloaded, "saved_gib": resident - offloaded}


def main() -> None:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--world", type=int, default=2, help="ranks of the group (processes; one GPU each on a GPU)")
    p.add_argument("--flavor", default=None, help="wan2_1 flavor (default: tiny with --tiny, else 1.3b)")
    p.add_argument("--frames", type=int, default=None)
    p.add_argument("--height", type=int, default=None)
    p.add_argument("--width", type=int, default=None)
    args = p.parse_args()
    tiny = (9, 32, 32) if args.tiny else (81, 480, 832)
    args.flavor = args.flavor or ("tiny" if args.tiny else "1.3b")
    args.frames, args.height, args.width = (given or default for given, default in
                                            zip((args.frames, args.height, args.width), tiny))
    args.steps -= args.steps % args.world  # whole windows of encoder-DP
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = Path(args.results) / ".encoder_engines_ranks.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    mp.start_processes(_worker, args=(args, port, str(out)), nprocs=args.world, join=True, start_method="spawn")
    ranks = json.loads(out.read_text())
    out.unlink()
    every, dp = statistics.median(r["every_s"] for r in ranks), statistics.median(r["dp_s"] for r in ranks)
    device = common.device_of(args.device)
    line = {
        "workload": "encoder_dp",
        "device": common.device_name(device),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join(["python", Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "torch": torch.__version__,
        "shape": {"flavor": args.flavor, "frames": args.frames, "height": args.height, "width": args.width},
        "world": args.world,
        "steps": args.steps,
        "every_rank_encodes": ranks[0]["every_encodes"],
        "encoder_dp_encodes": [r["dp_encodes"] for r in ranks],
        "every_rank_encode_s": every,
        "encoder_dp_s": dp,
        "encoder_dp_time_ratio": dp / every,
        "offload": offload_memory(args),
    }
    print(f"encoder-DP on {args.world} × {line['device']} | {args.steps} steps of {args.frames}×{args.height}×"
          f"{args.width} ({args.flavor}): every rank {line['every_rank_encodes']} encodes in {every:.3f} s; "
          f"encoder-DP {line['encoder_dp_encodes']} encodes, {dp:.3f} s with the gathers "
          f"({line['encoder_dp_time_ratio']:.2f}×)")
    if line["offload"]:
        print(f"offload: {line['offload']['resident_gib']:.2f} GiB on the device with the text encoder, "
              f"{line['offload']['offloaded_gib']:.2f} GiB without it")
    with open(Path(args.results) / "encoder_engines.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(line) + "\n")


if __name__ == "__main__":
    main()
