"""Features extracted by MindSpeed-MM (one torch file per sample under features/) train mm's video plugins."""

from __future__ import annotations

import json

import torch
import torch.nn.functional as F
from wan_testing import wan_config

from mm_core.runtime import create_runtime
from mm_data.features import FeatureDataset
from mm_models_video.wan2_1.data import build_train_loader
from mm_models_video.wan2_1.extract import extract_features

PAD = 5  # MindSpeed-MM stores the text encoder's padded output and its mask


def _as_mindspeed_store(store, out):
    """mm's feature store rewritten as MindSpeed-MM's get_sora_feature.py writes it."""
    (out / "features").mkdir(parents=True)
    lines = []
    for n, item in enumerate(FeatureDataset(store)):
        embeds = item["prompt_embeds"]
        mask = torch.zeros(len(embeds) + PAD, dtype=torch.long)
        mask[: len(embeds)] = 1
        torch.save({"video": item["latents"], "prompt_ids": F.pad(embeds, (0, 0, 0, PAD)),
                    "prompt_mask": mask}, out / "features" / f"clip_{n}.pt")
        lines.append(json.dumps({"file": f"features/clip_{n}.pt", "captions": item["prompt"]}))
    (out / "data.jsonl").write_text("\n".join(lines) + "\n")
    return out / "data.jsonl"


def test_wan2_1_trains_on_mindspeed_mm_features_as_on_its_own(tmp_path):
    config = wan_config(f"extract.output_dir={tmp_path / 'mm'}", "training.device=cpu", task="extract")
    extract_features(config, create_runtime(config))
    index = _as_mindspeed_store(tmp_path / "mm", tmp_path / "mindspeed")
    batches = []
    for data_path, folder in ((tmp_path / "mm" / "data.jsonl", ""), (index, tmp_path / "mindspeed")):
        run = wan_config("training.device=cpu", "training.micro_batch_size=2", "training.global_batch_size=2",
                         "data.dataset_param.dataset_type=feature", f"data.dataset_param.data_path={data_path}",
                         f"data.dataset_param.data_folder={folder}")
        batches.append(next(iter(build_train_loader(run, create_runtime(run)))))
    ours, theirs = batches
    torch.testing.assert_close(theirs["latents"], ours["latents"])
    torch.testing.assert_close(theirs["prompt_embeds"], ours["prompt_embeds"])
    assert theirs["prompt"] == ours["prompt"]
