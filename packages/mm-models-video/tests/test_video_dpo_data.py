"""video_dpo's preference data: the built-in scorer, score files, VBench's absence, the histogram generator."""

from __future__ import annotations

import importlib.util
import json
import shutil

import pytest
from wan_testing import wan_config

from mm_core.errors import ConfigError
from mm_models_video.video_dpo import histogram_generator
from mm_models_video.video_dpo.data import PreferenceDataset, read_pairs
from mm_models_video.video_dpo.frames import read_frames
from mm_models_video.video_dpo.histogram import weighted_scores
from mm_models_video.video_dpo.scorers import ScoreFileScorer, VBenchScorer, frame_statistics
from mm_models_video.video_dpo.synthetic import make_preference_set
from mm_models_video.wan2_1.data import data_config, video_dataset


@pytest.fixture(scope="module")
def pairs_folder():
    """The generated smooth-vs-flicker set at a tiny size."""
    return make_preference_set(5, 16, 16)


def test_the_frame_scorer_prefers_the_smooth_clip_of_every_pair(pairs_folder) -> None:
    pairs = read_pairs(pairs_folder / "data.jsonl", pairs_folder / "videos")
    assert len(pairs) == 8
    for pair in pairs:
        chosen, rejected = (frame_statistics(read_frames(r.path)) for r in (pair.chosen, pair.rejected))
        assert chosen["temporal_consistency"] > rejected["temporal_consistency"]
        assert pair.score > pair.score_rejected
    histogram = json.loads((pairs_folder / "video_score_histogram.json").read_text())
    assert histogram["total_num"] == 16 and histogram["bin_width"] == 0.1
    assert sum(v for k, v in histogram.items() if "-" in k) == 16


def test_the_generator_reads_mm_infer_numbering_and_writes_beside_the_videos(pairs_folder, tmp_path, capsys) -> None:
    videos = tmp_path / "out" / "videos"
    videos.mkdir(parents=True)
    for k in range(16):  # mm infer's <stem>_<prompt*N+video>.mp4, and the grid the seeds say to delete
        shutil.copy(pairs_folder / "videos" / f"video_{k}.mp4", videos / f"sample_{k}.mp4")
    shutil.copy(pairs_folder / "videos" / "video_0.mp4", videos / "video_grid.mp4")
    status = histogram_generator.main(["--prompt_file", str(pairs_folder / "prompts.txt"), "--videos_path", str(videos),
                                       "--num_inference_videos_per_sample", "2", "--scorer", "frames"])
    assert status == 0
    assert f"wrote {tmp_path / 'out' / 'data.jsonl'} (8 pairs)" in capsys.readouterr().out
    lines = [json.loads(line) for line in (tmp_path / "out" / "data.jsonl").read_text().splitlines()]
    expected = [json.loads(line) for line in (pairs_folder / "data.jsonl").read_text().splitlines()]
    assert [e["file"].replace("sample", "video") for e in lines] == [e["file"] for e in expected]
    assert set(lines[0]) == {"file", "file_rejected", "captions", "score", "score_rejected"}
    assert (tmp_path / "out" / "video_score_histogram.json").is_file()

    status = histogram_generator.main(["--prompt_file", str(pairs_folder / "prompts.txt"), "--videos_path", str(videos),
                                       "--num_inference_videos_per_sample", "3", "--scorer", "frames"])
    assert status == 2
    assert "holds 16 numbered mp4s, but 8 prompts × 3 videos per prompt make 24" in capsys.readouterr().err


def test_scores_from_a_file_are_normalized_and_weighted_as_the_seeds_do(tmp_path) -> None:
    vbench = {"subject_consistency": [0.9, [{"video_path": "/x/video_0.mp4", "video_results": 0.9},
                                            {"video_path": "/x/video_1.mp4", "video_results": 0.8},
                                            {"video_path": "/x/video_2.mp4", "video_results": 0.7}]],
              "imaging_quality": [0.5, [{"video_path": "/x/video_0.mp4", "video_results": 0.2},
                                        {"video_path": "/x/video_1.mp4", "video_results": 0.6},
                                        {"video_path": "/x/video_2.mp4", "video_results": 0.4}]]}
    path = tmp_path / "StepVideoDPO_eval_results.json"
    path.write_text(json.dumps(vbench))
    scorer = ScoreFileScorer(path)
    assert scorer.dimensions == ("imaging_quality", "subject_consistency")
    videos = [tmp_path / f"video_{k}.mp4" for k in range(3)]
    scores = weighted_scores(scorer.score(videos), {"imaging_quality": 4.0, "subject_consistency": 4.0})
    # per dimension min-max: subject (1, 0.5, 0), imaging (0, 1, 0.5); equal weights average them.
    assert [scores[v] for v in videos] == pytest.approx([0.5, 0.75, 0.25])
    (tmp_path / "plain.json").write_text(json.dumps({"video_0.mp4": 1.0}))
    with pytest.raises(Exception, match="has no score for .*video_1.mp4"):
        ScoreFileScorer(tmp_path / "plain.json").score(videos)


@pytest.mark.skipif(importlib.util.find_spec("vbench") is not None, reason="VBench is installed here")
def test_vbench_without_vbench_says_what_to_do(tmp_path) -> None:
    with pytest.raises(ConfigError, match="--scorer vbench needs VBench and its model weights .* --scorer frames"):
        VBenchScorer(tmp_path, "VBench_full_info.json", tmp_path / "eval")


def test_data_json_cfg_drops_the_chosen_captions_per_epoch(pairs_folder) -> None:
    config = wan_config("data.dataset_param.cfg=0.5", "data.dataset_param.num_frames=5",
                        "data.dataset_param.max_height=16", "data.dataset_param.max_width=16")
    template = video_dataset(config, data_config(config))
    dataset = PreferenceDataset(template, read_pairs(pairs_folder / "data.jsonl", pairs_folder / "videos"))
    seed = template.seed
    dropped = [{i for i in range(len(dataset)) if dataset[(epoch, i)]["prompt"] == ""} for epoch in (0, 1)]
    expected = [{i for i in range(len(dataset)) if template.options.drops_caption(seed, epoch, i)} for epoch in (0, 1)]
    assert dropped == expected and dropped[0] != dropped[1]
