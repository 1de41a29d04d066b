"""The seeds' histogram generator: score the videos ``mm infer`` generated, pair the best with the worst per prompt.

``python -m mm_models_video.video_dpo.histogram_generator --prompt_file prompts.txt --videos_path out/videos
--num_inference_videos_per_sample 4`` writes ``data.jsonl`` and ``video_score_histogram.json`` beside the videos
folder (in its parent), as the seeds' guide says. The videos are the folder's numbered mp4s in number order
(``video_0.mp4, video_1.mp4, ...`` as the seeds name them, or ``p0_0.mp4, p0_1.mp4, p1_0.mp4 ...`` as
``mm infer ... inference.output=out/videos/p0.mp4`` names them): the first N belong to the first prompt.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mm_core.errors import ConfigError, DataError
from mm_models_video.video_dpo import histogram
from mm_models_video.video_dpo.scorers import (
    DEFAULT_WEIGHT,
    FrameStatisticsScorer,
    ScoreFileScorer,
    Scorer,
    VBenchScorer,
)

SCORERS = ("auto", "frames", "file", "vbench")


def read_prompts(path: Path) -> list[str]:
    """The non-empty lines of a prompt file."""
    if not path.is_file():
        raise ConfigError(f"--prompt_file {path} does not exist")
    prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts:
        raise ConfigError(f"--prompt_file {path} holds no prompt")
    return prompts


def _numbers(path: Path) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", path.stem))


def numbered_videos(videos_path: Path) -> list[Path]:
    """The folder's mp4s that carry a number in their name (video_grid.mp4 and the like are left out), in order."""
    if not videos_path.is_dir():
        raise ConfigError(f"--videos_path {videos_path} is not a folder")
    return sorted((p for p in videos_path.glob("*.mp4") if _numbers(p)), key=lambda p: (_numbers(p), p.name))


def group_videos(
    videos: Sequence[Path], prompts: Sequence[str], per_prompt: int, videos_path: Path
) -> list[list[Path]]:
    """The videos of each prompt: consecutive runs of ``per_prompt``."""
    if per_prompt < 2:
        raise ConfigError(f"--num_inference_videos_per_sample must be at least 2 to make pairs, got {per_prompt}")
    if len(videos) != len(prompts) * per_prompt:
        raise DataError(f"--videos_path {videos_path} holds {len(videos)} numbered mp4s, but {len(prompts)} prompts × "
                        f"{per_prompt} videos per prompt make {len(prompts) * per_prompt}")
    return [list(videos[i * per_prompt:(i + 1) * per_prompt]) for i in range(len(prompts))]


@dataclass(frozen=True)
class Generated:
    """What one run wrote: the two files and the pair count."""

    data: Path
    histogram: Path
    pairs: int


def generate(prompt_file: Path, videos_path: Path, per_prompt: int, scorer: Scorer,
             output_dir: Path | None = None) -> Generated:
    """Score, weight, pair and write data.jsonl and video_score_histogram.json (in ``output_dir``, default the
    videos folder's parent)."""
    prompts = read_prompts(prompt_file)
    groups = group_videos(numbered_videos(videos_path), prompts, per_prompt, videos_path)
    videos = [video for group in groups for video in group]
    raw = scorer.score(videos)
    weights = {dimension: DEFAULT_WEIGHT for dimension in scorer.dimensions}
    scores = histogram.weighted_scores(raw, weights)
    entries = histogram.preference_pairs(prompts, groups, scores, videos_path)
    data, hist = histogram.write_outputs(output_dir or videos_path.resolve().parent, entries,
                                         histogram.build_histogram(list(scores.values())))
    return Generated(data, hist, len(entries))


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The seeds' flags, plus the choice of scorer."""
    parser = argparse.ArgumentParser(prog="python -m mm_models_video.video_dpo.histogram_generator",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--prompt_file", type=Path, required=True, help="the prompts the videos were generated for")
    parser.add_argument("--videos_path", type=Path, required=True, help="the folder of generated videos")
    parser.add_argument("--num_inference_videos_per_sample", type=int, default=3, help="videos per prompt")
    parser.add_argument("--scorer", choices=SCORERS, default="auto",
                        help="frames: computed from the frames; file: --scores; vbench: VBench's five dimensions; "
                             "auto: vbench when installed, else frames")
    parser.add_argument("--scores", type=Path, help="a JSON file of scores computed elsewhere (implies --scorer file)")
    parser.add_argument("--output_dir", type=Path, help="where to write (default: the videos folder's parent)")
    parser.add_argument("--full_json_dir", default="./vbench/VBench_full_info.json", help="VBench's full info json")
    parser.add_argument("--load_ckpt_from_local", action="store_true", help="VBench: load its checkpoints locally")
    parser.add_argument("--imaging_quality_preprocessing_mode", default="longer", help="VBench's option")
    return parser.parse_args(argv)


def build_scorer(args: argparse.Namespace) -> Scorer:
    """The scorer the flags ask for."""
    name = "file" if args.scores is not None else args.scorer
    if name == "file":
        if args.scores is None:
            raise ConfigError("--scorer file needs --scores FILE")
        return ScoreFileScorer(args.scores)
    if name == "auto":
        try:
            import vbench  # noqa: F401
        except ImportError:
            name = "frames"
        else:
            name = "vbench"
        print(f"scorer: {name}")
    if name == "vbench":
        out = (args.output_dir or args.videos_path.resolve().parent) / "evaluation_results"
        return VBenchScorer(args.videos_path, args.full_json_dir, out, args.load_ckpt_from_local,
                            args.imaging_quality_preprocessing_mode)
    return FrameStatisticsScorer()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the generator; a bad flag or input is one ``error:`` line and exit status 2."""
    args = parse_args(argv)
    try:
        result = generate(args.prompt_file, args.videos_path, args.num_inference_videos_per_sample,
                          build_scorer(args), args.output_dir)
    except (ConfigError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {result.data} ({result.pairs} pairs) and {result.histogram}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
