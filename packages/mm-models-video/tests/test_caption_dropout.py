"""data.json's ``cfg`` in the shared video loader: a caption is dropped (to "") with that probability, drawn per
(training seed, epoch, index), so epochs drop different captions and a resumed run drops the same ones."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from wan_testing import wan_config

from mm_core.data_iter import DataIterator
from mm_core.plugins import load_plugins, make_config
from mm_core.runtime import create_runtime
from mm_data.clip_options import FEATURES, NO_PREPROCESSING, PREPROCESSING_CFG, clip_options
from mm_data.formats import parse_data_config
from mm_data.synthetic import make_moving_shapes
from mm_models_video.custom_dit.data import PromptTokenizer
from mm_models_video.custom_dit.data import build_train_loader as custom_dit_loader
from mm_models_video.stepvideo.data import data_config as stepvideo_data_config
from mm_models_video.wan2_1.data import build_train_loader as wan_loader

NUM_SAMPLES, BATCH = 40, 4
EPOCH = NUM_SAMPLES // BATCH


@pytest.fixture(scope="module")
def captioned(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An index of 40 samples over 4 tiny 9-frame 32x32 clips, each sample with its own caption."""
    folder = make_moving_shapes(tmp_path_factory.mktemp("cfg"), num_videos=4, num_frames=9, height=32, width=32)
    videos = [entry["path"] for entry in json.loads((folder / "data.json").read_text())]
    lines = [json.dumps({"path": str(folder / videos[i % 4]), "cap": f"caption {i}"}) for i in range(NUM_SAMPLES)]
    (folder / "captioned.jsonl").write_text("\n".join(lines) + "\n")
    return folder / "captioned.jsonl"


def _wan(index: Path, *overrides: str):
    return wan_config("training.device=cpu", f"training.micro_batch_size={BATCH}",
                      f"training.global_batch_size={BATCH}", f"data.dataset_param.data_path={index}", *overrides)


def _stream(config, batches: int, state: dict | None = None) -> list[tuple[int, int, str]]:
    """(epoch, index, prompt) of each sample of the next ``batches`` batches of a fresh loader (resumed at
    ``state``), as training draws them."""
    stream = DataIterator(wan_loader(config, create_runtime(config)), seed=config.training.seed,
                          samples_per_batch=BATCH)
    if state is not None:
        stream.load_state_dict(state)
    rows = []
    for _ in range(batches):
        batch = next(stream)
        rows += zip(batch["epoch"].tolist(), batch["index"].tolist(), batch["prompt"])
    return rows


def test_cfg_drops_half_the_captions_others_each_epoch_and_the_same_when_resumed(captioned: Path) -> None:
    config = _wan(captioned, "data.dataset_param.cfg=0.5")
    straight = _stream(config, 2 * EPOCH)
    dropped = [{index for epoch, index, prompt in straight if epoch == e and prompt == ""} for e in (0, 1)]
    assert all(12 <= len(d) <= 28 for d in dropped) and dropped[0] != dropped[1]
    kept = {(index, prompt) for _, index, prompt in straight if prompt}
    assert all(prompt == f"caption {index}" for index, prompt in kept)
    # A run resumed in epoch 1 (three batches in) reads and drops as the straight run did.
    resumed = _stream(config, EPOCH - 3, {"epoch": 1, "position": 3, "samples_per_batch": BATCH})
    assert resumed == straight[EPOCH * BATCH + 3 * BATCH:]
    # Loader worker processes (as every rank's process) draw the same.
    assert _stream(_wan(captioned, "data.dataset_param.cfg=0.5", "data.dataloader_param.num_workers=2"),
                   EPOCH) == straight[: EPOCH * BATCH]
    # Another seed drops other captions.
    other = _stream(_wan(captioned, "data.dataset_param.cfg=0.5", "training.seed=7"), EPOCH)
    assert {index for _, index, prompt in other if prompt == ""} != dropped[0]


def test_cfg_0_reads_what_a_data_json_without_it_reads(captioned: Path) -> None:
    # Identical batches, so the embedded run's losses stay those of a run without cfg, bit for bit.
    configs = (_wan(captioned), _wan(captioned, "data.dataset_param.cfg=0"))
    plain, zero = (next(iter(wan_loader(c, create_runtime(c)))) for c in configs)
    assert torch.equal(plain["video"], zero["video"]) and plain["prompt"] == zero["prompt"]
    assert all(prompt.startswith("caption ") for prompt in plain["prompt"])


def test_custom_dit_tokenizes_the_dropped_caption(captioned: Path) -> None:
    config = make_config(load_plugins(["custom_dit"]), "run", [], None, [
        "logging.progress_bar=false", "training.device=cpu", f"training.micro_batch_size={BATCH}",
        f"training.global_batch_size={BATCH}", f"data.dataset_param.data_path={captioned}",
        "data.dataset_param.num_frames=9", "data.dataset_param.max_height=32", "data.dataset_param.max_width=32",
        "data.dataset_param.cfg=0.5"])
    batches = list(custom_dit_loader(config, create_runtime(config)))
    empty = PromptTokenizer.from_config(None)("")["prompt_ids"]
    rows = [(prompt, ids) for batch in batches for prompt, ids in zip(batch["prompt"], batch["prompt_ids"])]
    assert any(prompt == "" for prompt, _ in rows) and any(prompt for prompt, _ in rows)
    assert all(torch.equal(ids, empty) == (prompt == "") for prompt, ids in rows)
    assert {batch["epoch"].unique().item() for batch in batches} == {0}


def test_cfg_follows_mindspeed_mm_text_processing_and_features_keep_the_warning(captioned: Path) -> None:
    def options(**keys):
        raw = {"dataset_param": {"basic_parameters": {"data_path": str(captioned)}, **keys}}
        return clip_options(parse_data_config(raw).dataset_param)

    # MindSpeed-MM's TextProcesser drops 10% when no cfg is given, and none when it does not preprocess captions.
    assert options(use_text_processer=True).cfg == PREPROCESSING_CFG and options().cfg == 0
    assert options(use_text_processer=True, cfg=0.3).cfg == 0.3
    unprocessed = options(use_text_processer=True, enable_text_preprocessing=False, cfg=0.3)
    assert unprocessed.cfg == 0 and dict(unprocessed.unused)["cfg"] == NO_PREPROCESSING
    features = clip_options(dataclasses.replace(parse_data_config(
        {"dataset_param": {"data_path": str(captioned), "cfg": 0.1}}).dataset_param, dataset_type="feature"))
    assert features.cfg == 0 and features.unused == (("cfg", FEATURES),)


def test_stepvideo_s_data_json_without_text_preprocessing_drops_no_caption() -> None:
    # MindSpeed-MM's stepvideo files turn its text preprocessing off, and with it cfg.
    data = Path(__file__).resolve().parents[3] / "examples/stepvideo/mindspeed-mm/t2v/data_static_resolution.json"
    config = make_config(load_plugins(["stepvideo"]), "run", [], {"data": data},
                         ["model.flavor=tiny", "data.dataset_param.dataset_type=t2v", "data.dataset_param.cfg=0.3"])
    options = clip_options(stepvideo_data_config(config).dataset_param)
    assert options.cfg == 0 and dict(options.unused)["cfg"] == NO_PREPROCESSING
