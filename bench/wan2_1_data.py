"""Wan2.1 data loading: real H.264 clips through the wan2_1 plugin's dataloader at the example config, against a step.

    python bench/wan2_1_data.py                     # 81×480×832 from 480×832 24 fps clips, the example's workers
    python bench/wan2_1_data.py --num-workers 2     # as many workers as a 2-core machine can run faithfully
    python bench/wan2_1_data.py --tiny              # 9×32×32 from 48×64 clips: checks the script in seconds

It writes ``--clips`` mp4s (a dead-leaves texture, discs of every size, panning across the frame, so that x264
spends the bit rate it is given: YouTube's 2.5 Mbit/s for 480p by default) and a data.json in the seeds' format
listing them over and over (no epoch ends during a measurement), builds the config as ``mm run --plugin wan2_1``
does from the example's files with ``data_path`` pointing there, takes the loader from the plugin's
``datasets_provider`` and times:

- sample: one sample's decode, transform and collate in this process on one thread (as in a worker), per backend;
- loader: seconds per micro-batch drawn back to back through the plugin's ``get_batch``;
- simulated: ``--steps`` steps that each draw the step's micro-batches as the Trainer does (its ``data_s``) and then
  sleep ``--step-s`` in place of the GPU step: the median and mean wait and their share of the step.

One rank's load is simulated: ``global_batch_size / (micro_batch_size × --ranks)`` micro-batches per step (the
example's 8 ranks: one clip per step). From the loader's time per micro-batch of one worker (its s/batch × the
workers that had a core each) it projects the wait of the configured worker count on a machine with a core per
worker, and the fewest workers that keep the wait under 2% of the step.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import av
import common
import numpy as np
import torch

from mm_core.config import Config
from mm_core.data_iter import DataIterator
from mm_core.plugins import load_plugins, make_config
from mm_core.runtime import create_runtime
from mm_core.trainer import accumulation_steps
from mm_data.datasets import collate
from mm_data.formats import load_data_config
from mm_data.transforms import resize_center_crop
from mm_data.video import BACKENDS, decord, read_video

WORKLOAD = "wan2_1_data"
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "wan2_1"
TARGET_FRACTION = 0.02
# (clip frames, height, width) the loader yields and (frames, height, width, fps) of the source mp4s: full 480×832
# like the seeds' index, 121 frames (5 s) so that the clip start is drawn; tiny ones are resized and cropped.
SHAPES = {"full": ((81, 480, 832), (121, 480, 832, 24)), "tiny": ((9, 32, 32), (17, 48, 64, 24))}


def frame_size(text: str) -> tuple[int, int]:
    """``HxW`` as (height, width): even numbers, as H.264 in yuv420p needs."""
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 and int(p) % 2 == 0 for p in parts):
        raise argparse.ArgumentTypeError(f"expected HEIGHTxWIDTH in even pixels such as 720x1280, got {text!r}")
    return int(parts[0]), int(parts[1])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The arguments of this script (bench/common.py's style)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="tiny clips and shape: checks the script in seconds")
    p.add_argument("--device", default="cpu", help="training.device of the run (cuda adds pinning and the copy)")
    p.add_argument("--example", type=Path, default=EXAMPLE, help="folder of pretrain_t2v_1.3b.yaml, model.json...")
    p.add_argument("--num-workers", type=int, default=None, help="dataloader workers (default: the data.json's)")
    p.add_argument("--step-s", type=float, default=1.56, help="seconds of the GPU step the loader must keep up with")
    p.add_argument("--ranks", type=int, default=8, help="data-parallel ranks of the example run (README: 8)")
    p.add_argument("--clips", type=int, default=8, help="distinct mp4 files written")
    p.add_argument("--source-size", type=frame_size, default=None, metavar="HxW",
                   help="height×width of the mp4s (default 480x832, tiny 48x64); larger ones are resized")
    p.add_argument("--bitrate", type=float, default=2.5, help="H.264 bit rate of the clips in Mbit/s")
    p.add_argument("--warmup", type=int, default=3, help="untimed loader batches and simulated steps first")
    p.add_argument("--batches", type=int, default=16, help="timed loader batches drawn back to back")
    p.add_argument("--steps", type=int, default=30, help="timed simulated steps")
    p.add_argument("--results", type=Path, default=common.RESULTS, help="folder of <workload>.jsonl")
    return p.parse_args(argv)


def dead_leaves(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """uint8 [H, W, 3] of overlapping discs of random colours, radii from a power law (edges at every scale)."""
    image = np.empty((height, width, 3), np.uint8)
    image[:] = rng.integers(0, 256, 3)
    count = max(height * width // 100, 50)
    radii = np.minimum(4 / rng.uniform(0.02, 1, count) ** 0.8, min(height, width) / 4)
    for r, cy, cx in zip(radii, rng.uniform(0, height, count), rng.uniform(0, width, count)):
        y0, y1 = int(max(cy - r, 0)), int(min(cy + r + 1, height))
        x0, x1 = int(max(cx - r, 0)), int(min(cx + r + 1, width))
        ys, xs = np.ogrid[y0:y1, x0:x1]
        image[y0:y1, x0:x1][(ys - cy) ** 2 + (xs - cx) ** 2 <= r * r] = rng.integers(0, 256, 3)
    return image


def write_clip(path: Path, seed: int, frames: int, height: int, width: int, fps: int, bitrate: float) -> int:
    """Encode a panning dead-leaves clip as H.264 (x264 preset medium, ``bitrate`` Mbit/s); its size in bytes."""
    rng = np.random.default_rng(seed)
    pan = 3
    texture = dead_leaves(rng, height + 8, width + pan * frames)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.bit_rate = int(bitrate * 1e6)
        stream.options = {"preset": "medium"}
        for t in range(frames):
            shake = (t // 8) % 8
            image = np.ascontiguousarray(texture[shake : shake + height, t * pan : t * pan + width])
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())
    return path.stat().st_size


def write_dataset(folder: Path, source: tuple[int, int, int, int], clips: int, records: int,
                  bitrate: float) -> float:
    """``clips`` mp4s and a data.json listing them ``records`` times in all; their mean bit rate in Mbit/s."""
    frames, height, width, fps = source
    (folder / "videos").mkdir(parents=True)
    sizes = [write_clip(folder / "videos" / f"video{i:04d}.mp4", i, frames, height, width, fps, bitrate)
             for i in range(clips)]
    entries = [{"path": f"videos/video{i % clips:04d}.mp4", "cap": f"Dead leaves panning, clip {i % clips}.",
                "num_frames": frames, "fps": fps, "resolution": {"height": height, "width": width}}
               for i in range(records)]
    (folder / "data.json").write_text(json.dumps(entries))
    return statistics.mean(sizes) * 8 / (frames / fps) / 1e6


def run_config(args: argparse.Namespace, pm, folder: Path, clip: tuple[int, int, int]) -> Config:
    """The config of ``mm run --plugin wan2_1`` with the example's files, reading the clips in ``folder``."""
    example = args.example
    overrides = [f"data.dataset_param.basic_parameters.data_path={folder / 'data.json'}",
                 f"data.dataset_param.basic_parameters.data_folder={folder}", f"training.device={args.device}"]
    if args.tiny:
        frames, height, width = clip
        overrides += [f"data.dataset_param.preprocess_parameters.num_frames={frames}",
                      f"data.dataset_param.preprocess_parameters.max_height={height}",
                      f"data.dataset_param.preprocess_parameters.max_width={width}"]
    if args.num_workers is not None:
        overrides.append(f"data.dataloader_param.num_workers={args.num_workers}")
    sections = {"model": example / "model.json", "data": example / "data.json"}
    return make_config(pm, "run", [example / "pretrain_t2v_1.3b.yaml"], sections, overrides, "wan2_1")


def time_sample(dataset, backend: str) -> dict:
    """Median seconds of decoding, transforming and collating each clip once, on one thread as in a worker."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    parts: dict[str, list[float]] = {"decode_s": [], "transform_s": [], "collate_s": []}
    try:
        seen = set()
        for index, record in enumerate(dataset.records):
            if record.path in seen:
                continue
            seen.add(record.path)
            generator = torch.Generator().manual_seed(dataset.seed * 1_000_003 + index)
            start = time.perf_counter()
            frames = read_video(record.path, dataset.num_frames, dataset.target_fps, generator=generator,
                                backend=backend)
            decoded = time.perf_counter()
            video = resize_center_crop(frames, dataset.height, dataset.width)
            transformed = time.perf_counter()
            collate([{"video": video, "prompt": record.caption, "index": index}])
            done = time.perf_counter()
            for key, seconds in zip(parts, (decoded - start, transformed - decoded, done - transformed)):
                parts[key].append(seconds)
    finally:
        torch.set_num_threads(threads)
    sample = {key: statistics.median(values) for key, values in parts.items()}
    sample["total_s"] = sum(sample.values())
    return sample


def draw(pm, data_iter: DataIterator, runtime) -> tuple[dict, float]:
    """The next micro-batch through the plugin's get_batch and the seconds waited, as the Trainer measures them
    (no model: the data alone, its encoders off)."""
    start = time.perf_counter()
    batch = pm.hook.get_batch(data_iterator=data_iter, runtime=runtime, model=None)
    return batch, time.perf_counter() - start


def children_cpu_s() -> float | None:
    """CPU seconds (user + system) so far of this process's live children, the loader's workers; None without /proc."""
    tasks = Path(f"/proc/{os.getpid()}/task")
    if not tasks.is_dir():
        return None
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for task in tasks.iterdir():
        try:
            children = (task / "children").read_text().split()
        except OSError:
            return None
        for pid in children:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += (int(fields[11]) + int(fields[12])) / tick  # utime and stime, fields 14 and 15
    return total


def time_loader(pm, loader, runtime, seed: int, warmup: int, batches: int, ready_draws: int = 5) -> dict:
    """Seconds per micro-batch drawn back to back after ``warmup`` (the first one, workers starting, apart).

    Also the CPU seconds the workers and this process spend per micro-batch meanwhile, which a busy machine
    inflates far less than the wall time, and the wait for a batch that is ready (the median of
    ``ready_draws`` draws, each after a pause long enough for the workers to have one).
    """
    data_iter = DataIterator(loader, "train", seed=seed)
    batch, first = draw(pm, data_iter, runtime)
    for _ in range(warmup - 1):
        draw(pm, data_iter, runtime)
    workers_cpu, main_cpu, start = children_cpu_s(), time.process_time(), time.perf_counter()
    for _ in range(batches):
        draw(pm, data_iter, runtime)
    elapsed = time.perf_counter() - start
    main_cpu = time.process_time() - main_cpu
    workers_cpu = children_cpu_s() - workers_cpu if workers_cpu is not None else None
    ready = []
    for _ in range(ready_draws):
        time.sleep(1.5 * elapsed / batches)
        ready.append(draw(pm, data_iter, runtime)[1])
    return {"first_batch_s": first, "batches": batches, "s_per_batch": elapsed / batches,
            "worker_cpu_s_per_batch": workers_cpu / batches if workers_cpu is not None and loader.num_workers else None,
            "main_cpu_s_per_batch": main_cpu / batches, "ready_wait_s": statistics.median(ready),
            "batch_video_shape": list(batch["video"].shape), "batch_video_dtype": str(batch["video"].dtype),
            "batch_video_mib": batch["video"].nbytes / 2**20}


def simulate(pm, loader, runtime, seed: int, accum: int, step_s: float, warmup: int, steps: int) -> dict:
    """Steps that draw ``accum`` micro-batches (the Trainer's data_s) and sleep ``step_s``: wait per step."""
    data_iter = DataIterator(loader, "train", seed=seed)
    waits = []
    for _ in range(warmup + steps):
        waits.append(sum(draw(pm, data_iter, runtime)[1] for _ in range(accum)))
        time.sleep(step_s)
    timed = waits[warmup:]
    return {"steps": steps, "first_wait_s": waits[0], "wait_median_s": statistics.median(timed),
            "wait_mean_s": statistics.mean(timed), "wait_min_s": min(timed), "wait_max_s": max(timed),
            "wait_fraction_median": statistics.median(timed) / step_s,
            "wait_fraction_mean": statistics.mean(timed) / step_s}


def wait_fraction(worker_s: float, workers: int, accum: int, ready_s: float, step_s: float) -> float:
    """Share of a step spent waiting with ``workers`` workers on a core each, in steady state.

    The workers together deliver a micro-batch every ``worker_s / workers`` seconds; a step consumes ``accum`` in
    ``step_s``, waiting for what they could not deliver meanwhile, plus ``ready_s`` to take ready batches.
    """
    return (ready_s + max(0.0, accum * worker_s / workers - step_s)) / step_s


def workers_needed(worker_s: float, accum: int, ready_s: float, step_s: float, limit: int = 1024) -> int | None:
    """The fewest workers whose wait stays under 2% of the step; None when taking ready batches alone costs more."""
    return next((w for w in range(1, limit + 1)
                 if wait_fraction(worker_s, w, accum, ready_s, step_s) < TARGET_FRACTION), None)


def cpu_info() -> dict:
    """This machine's CPU model, the cores this process may use and the load average when it started."""
    model = "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                 if line.startswith("model name")]
        model = names[0] if names else model
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return {"model": model, "cores": cores, "load_avg": [round(x, 2) for x in os.getloadavg()]}


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def measure(args: argparse.Namespace, folder: Path, cpu: dict) -> dict:
    """Write the clips, build the plugin's loader and time it; the result line without its header."""
    clip, source = SHAPES["tiny" if args.tiny else "full"]
    if args.source_size:
        source = (source[0], *args.source_size, source[3])
    pm = load_plugins(["wan2_1"])
    config = run_config(args, pm, folder, clip)
    configured = load_data_config(args.example / "data.json").dataloader_param.num_workers
    accum = accumulation_steps(config.training, args.ranks)
    micro = int(config.training.micro_batch_size)
    records = micro * accum * (args.warmup + max(args.batches, args.steps)) + args.clips
    bitrate = write_dataset(folder, source, args.clips, records, args.bitrate)
    runtime = create_runtime(config, "wan2_1")
    loader = pm.hook.datasets_provider(config=config, runtime=runtime)[0]
    workers = loader.num_workers
    dataset = loader.dataset.dataset  # the VideoTextDataset inside mm_data.EpochTagged
    samples = {backend: time_sample(dataset, backend) for backend in BACKENDS if backend != "decord" or decord}
    seed = int(config.training.seed)
    timed = time_loader(pm, loader, runtime, seed, args.warmup, args.batches)
    simulated = simulate(pm, loader, runtime, seed, accum, args.step_s, args.warmup, args.steps)
    # Workers beyond the free cores add no speed here: the wall time of one worker's micro-batch counts only
    # those with a core. Its CPU time, which other processes on the machine barely inflate, is the projection's.
    parallel = max(1, min(workers, cpu["cores"]))
    wall_s = timed["s_per_batch"] * parallel
    worker_s = timed["worker_cpu_s_per_batch"] or wall_s
    ready_s = timed["ready_wait_s"]
    return {
        "shape": {"frames": clip[0], "height": clip[1], "width": clip[2], "micro_batch_size": micro,
                  "micro_batches_per_step": accum, "ranks": args.ranks,
                  "source": {"frames": source[0], "height": source[1], "width": source[2], "fps": source[3],
                             "codec": "h264 (libx264 preset medium)", "bitrate_mbps": round(bitrate, 3),
                             "clips": args.clips, "records": records}},
        "options": {"num_workers": workers, "configured_workers": configured,
                    "pin_memory": bool(loader.pin_memory), "prefetch_factor": loader.prefetch_factor,
                    "persistent_workers": bool(loader.persistent_workers), "backend": dataset.backend or "default",
                    "default_backend": "decord" if decord else "pyav", "step_s": args.step_s,
                    "training_device": args.device},
        "warmup": args.warmup,
        "sample": samples,
        "loader": {**timed, "workers": workers, "workers_with_a_core": parallel, "worker_wall_s_per_batch": wall_s},
        "simulated": simulated,
        "projected": {
            "worker_s_per_batch": worker_s,
            "basis": "worker cpu time" if timed["worker_cpu_s_per_batch"] else "wall time × workers with a core",
            "ready_wait_s": ready_s,
            "this_machine_wait_fraction": wait_fraction(wall_s, parallel, accum, ready_s, args.step_s),
            "configured_workers": configured,
            "configured_wait_fraction": wait_fraction(worker_s, configured, accum, ready_s, args.step_s),
            "workers_needed": workers_needed(worker_s, accum, ready_s, args.step_s),
            "target_fraction": TARGET_FRACTION,
        },
        "faithful": workers <= cpu["cores"],
    }


def summary(line: dict) -> str:
    """The result in a few human lines."""
    cpu, loader, sim, proj = line["cpu"], line["loader"], line["simulated"], line["projected"]
    shape, source = line["shape"], line["shape"]["source"]
    rows = [f"{line['workload']} on cpu ({cpu['model']}, {cpu['cores']} cores, load {cpu['load_avg']}) | "
            f"{shape['frames']}×{shape['height']}×{shape['width']} from {source['height']}×{source['width']} "
            f"{source['fps']} fps H.264 at {source['bitrate_mbps']:.2f} Mbit/s | "
            f"{shape['micro_batches_per_step']} micro-batch(es) of {shape['micro_batch_size']} per step"]
    for backend, s in line["sample"].items():
        rows.append(f"  sample ({backend}, 1 thread): decode {s['decode_s']:.3f} s + transform "
                    f"{s['transform_s']:.3f} s + collate {s['collate_s']:.3f} s = {s['total_s']:.3f} s")
    cpu_s = loader["worker_cpu_s_per_batch"]
    rows.append(f"  loader, {loader['workers']} worker(s): {loader['s_per_batch']:.3f} s/batch (first "
                f"{loader['first_batch_s']:.2f} s, ready {loader['ready_wait_s']:.4f} s); per batch a worker takes "
                f"{loader['worker_wall_s_per_batch']:.3f} s wall"
                + (f", {cpu_s:.3f} s CPU" if cpu_s is not None else "")
                + f", this process {loader['main_cpu_s_per_batch']:.3f} s CPU; batch video "
                f"{loader['batch_video_shape']} {loader['batch_video_dtype']} {loader['batch_video_mib']:.0f} MiB")
    rows.append(f"  simulated {sim['steps']} steps of {line['options']['step_s']} s: wait median "
                f"{sim['wait_median_s']:.4f} s ({sim['wait_fraction_median']:.2%}), mean {sim['wait_mean_s']:.4f} s "
                f"({sim['wait_fraction_mean']:.2%}), max {sim['wait_max_s']:.3f} s")
    needed = proj["workers_needed"] if proj["workers_needed"] is not None else "none suffices"
    rows.append(f"  projected from {proj['worker_s_per_batch']:.3f} s per batch per worker ({proj['basis']}) "
                f"with a core per worker: {proj['configured_workers']} configured workers wait "
                f"{proj['configured_wait_fraction']:.2%} of the step; under {proj['target_fraction']:.0%} needs "
                f"{needed} worker(s); this machine: {proj['this_machine_wait_fraction']:.2%}")
    if not line["faithful"]:
        rows.append(f"  NOTE: {loader['workers']} workers on {cpu['cores']} cores: only "
                    f"{loader['workers_with_a_core']} run at a time here, so the loader and simulated figures are "
                    "this machine's, not those of a node with a core per worker")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> dict:
    """Measure, print and append the result line to ``<results>/wan2_1_data.jsonl``; returns it."""
    args = parse_args(argv)
    cpu = cpu_info()
    with tempfile.TemporaryDirectory(prefix="wan2_1_data-") as tmp:
        measured = measure(args, Path(tmp), cpu)
    line = {
        "workload": WORKLOAD,
        "device": f"cpu ({cpu['model']}, {cpu['cores']} cores)",
        "cpu": cpu,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join(["python", Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "torch": torch.__version__,
        "av": av.__version__,
        "decord": _version("decord"),
        **measured,
    }
    print(summary(line))
    args.results.mkdir(parents=True, exist_ok=True)
    with open(args.results / f"{WORKLOAD}.jsonl", "a", encoding="utf-8") as out:
        out.write(json.dumps(line) + "\n")
    return line


if __name__ == "__main__":
    main()
