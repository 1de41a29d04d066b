"""The LLaVA-Instruct conversion command, and video conversations through tokenization and the model."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import torch

from mm_data.mllm_format import read_mllm_dataset
from mm_data.synthetic import write_video
from mm_models_vlm.llava_to_mllm import main
from mm_models_vlm.qwen2_5_vl import plugin
from mm_models_vlm.qwen2_5_vl.dataset import ConversationDataset
from mm_models_vlm.qwen2_5_vl.encode import Encoder
from mm_models_vlm.qwen2_5_vl.packing import collate_packed


def test_llava_to_mllm_command(tmp_path, capsys):
    (tmp_path / "train2017").mkdir()
    (tmp_path / "train2017" / "1.jpg").write_bytes(b"")
    src = tmp_path / "llava_instruct_150k.json"
    src.write_text(json.dumps([
        {"image": "1.jpg",
         "conversations": [{"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "A."}]},
        {"image": "2.jpg", "conversations": []},
    ]))
    dst = tmp_path / "mllm.json"
    assert main([str(src), str(dst), "--image-dir", str(tmp_path / "train2017")]) == 0
    assert "wrote 1 records" in capsys.readouterr().out
    assert read_mllm_dataset(str(dst), tmp_path)[0].images == [tmp_path / "train2017" / "1.jpg"]
    assert main([str(src), str(dst)]) == 2
    assert "already exists" in capsys.readouterr().err


def test_video_conversation_trains(tmp_path, processor, settings, record, model, rope):
    frames = np.zeros((16, 56, 56, 3), dtype=np.uint8)
    frames[:, 10:40, 10:40, 0] = 255
    video = write_video(tmp_path / "clip.mp4", frames, fps=8)
    video_settings = dataclasses.replace(settings, video_fps=4.0, video_maxlen=4, video_max_pixels=56 * 56)
    encoded = Encoder(processor, video_settings).encode(record("<video>What moves?", "A red square.", videos=[video]))
    assert encoded.video_frames == [4]
    item = ConversationDataset([encoded], processor, video_settings)[0]
    assert item["video_grid_thw"].tolist() == [[2, 4, 4]]
    assert int((item["input_ids"] == processor.video_token_id).sum()) == 2 * 4 * 4 // 4
    batch = collate_packed([item], rope)
    logits = plugin.forward_step(batch=batch, model=model, runtime=None)
    loss, _ = plugin.loss_func(output=logits, batch=batch, runtime=None)
    loss.backward()
    assert torch.isfinite(loss) and model.model.visual.patch_embed.proj.weight.grad is not None
