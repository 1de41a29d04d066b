"""A MindSpeed-MM Wan2.1 inference model.json's ``mm infer`` guides with MindSpeed-MM's default negative prompt (the
FLF2V one for an FLF2V model) where the inference section gives none; mm's own runs keep an empty one."""

from __future__ import annotations

import json
from pathlib import Path

from mm_core.plugins import load_plugins, make_config
from mm_core.runtime import create_runtime
from mm_models_video.wan2_1.mindspeed import inference_values
from mm_models_video.wan2_1.model import WanT2V
from mm_models_video.wan2_1.plugin import inference

MINDSPEED = Path(__file__).resolve().parents[3] / "examples" / "wan2_1" / "mindspeed-mm"
TINY = {"patch_size": [1, 2, 2], "text_len": 64, "in_dim": 4, "hidden_size": 128, "ffn_dim": 256, "freq_dim": 64,
        "text_dim": 64, "img_dim": 32, "out_dim": 4, "num_heads": 4, "num_layers": 2, "max_seq_len": 256}
# MindSpeed-MM's NEGATIVE_PROMOPT_DEFAULT (mindspeed_mm/tasks/inference/pipeline/wan_pipeline.py)
DEFAULT = ("Bright tones, overexposed, static, blurred details, subtitles, style, works, paintings, images, static, "
           "overall gray, worst quality, low quality, JPEG compression residue, ugly, incomplete, extra fingers, "
           "poorly drawn hands, poorly drawn faces, deformed, disfigured, misshapen limbs, fused fingers, still "
           "picture, messy background, three legs, many people in the background, walking backwards")


def _config(model: Path | None, *overrides: str):
    sections = {"model": model} if model else {}
    return make_config(load_plugins(["wan2_1"]), "infer", [], sections, ["training.device=cpu", *overrides])


def _tiny_t2v(tmp_path: Path) -> Path:
    """MindSpeed-MM's 1.3B T2V inference model.json with the tiny architecture, no weights, one guided step."""
    model = json.loads((MINDSPEED / "1.3b/t2v/inference_model.json").read_text())
    model["predictor"].update(TINY)
    for part in ("ae", "tokenizer", "text_encoder"):
        model.get(part, {}).pop("from_pretrained", None)
    model["diffusion"].update(num_inference_steps=1, guidance_scale=5.0)
    model.update(prompt="a red circle", save_path=str(tmp_path), pipeline_config={"input_size": [5, 32, 32]})
    path = tmp_path / "inference_model.json"
    path.write_text(json.dumps(model))
    return path


def test_a_mindspeed_inference_file_guides_with_wanpipelines_default_negative_prompt(tmp_path, monkeypatch):
    encoded: list[list[str]] = []
    encode = WanT2V.encode_text

    def recorded(self, prompts):
        encoded.append(list(prompts))
        return encode(self, prompts)

    monkeypatch.setattr(WanT2V, "encode_text", recorded)
    config = _config(_tiny_t2v(tmp_path))
    assert "5 frames of 32x32" in inference(config, create_runtime(config))
    assert encoded == [["a red circle"], [DEFAULT]]


def test_flf2v_takes_its_own_default_and_a_given_negative_prompt_or_mms_own_run_keep_theirs():
    flf2v = inference_values(_config(MINDSPEED / "14b/flf2v/inference_model.json"))
    assert flf2v.negative_prompt == "Lens switching, lens shaking, bright tones" + DEFAULT[len("Bright tones"):]
    assert inference_values(_config(MINDSPEED / "14b/i2v/inference_model.json")).negative_prompt == DEFAULT
    given = _config(MINDSPEED / "1.3b/t2v/inference_model.json", "inference.negative_prompt=blurry")
    assert inference_values(given).negative_prompt == "blurry"
    assert inference_values(_config(None)).negative_prompt == ""
