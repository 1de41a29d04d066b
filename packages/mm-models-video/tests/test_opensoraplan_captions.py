"""Caption cleaning as OpenSoraPlan trains with it (the seeds' use_text_processer): what a caption becomes."""

from __future__ import annotations

import json

import pytest
from opensoraplan_testing import osp_config

from mm_data.synthetic import make_moving_shapes
from mm_models_video.captions import clean_caption
from mm_models_video.opensoraplan1_3.data import build_dataset, parse_data


@pytest.mark.parametrize(
    ("caption", "cleaned"),
    [
        ("A Dog Runs on the BEACH.", "a dog runs on the beach."),
        ("Visit https://example.com/x now <b>bold</b> @user", "visit now bold"),
        ("“quoted” — dash", '"quoted" - dash'),
        ("file.jpg shows a cat", "shows a cat"),
        ("this-is-my-cute-cat-photo", "this is my cute cat photo"),
        ("café%20au%20lait &amp; more", "café au lait more"),
        ("一只猫 a cat", "a cat"),
    ],
)
def test_clean_caption(caption, cleaned) -> None:
    assert clean_caption(caption) == cleaned


def test_use_text_processer_cleans_the_training_captions(tmp_path) -> None:
    folder = make_moving_shapes(tmp_path, num_videos=2, num_frames=9, height=64, width=64)
    entries = json.loads((folder / "data.json").read_text())
    entries[0]["cap"] = "A RED Circle <i>moving</i>"
    (folder / "data.json").write_text(json.dumps(entries))
    for flag, caption in ((True, "a red circle moving"), (False, "A RED Circle <i>moving</i>")):
        config = osp_config(f"data.dataset_param.data_path={folder / 'data.json'}",
                            f"data.dataset_param.use_text_processer={str(flag).lower()}")
        assert build_dataset(config, parse_data(config))[0]["prompt"] == caption
