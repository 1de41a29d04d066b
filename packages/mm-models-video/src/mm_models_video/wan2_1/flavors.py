"""Named Wan2.1 sizes for T2V and I2V: the architecture of each component, in diffusers' and transformers' own
config names."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mm_core.errors import ConfigError
from mm_models_video.encoders import CLIP_VIT_H, TINY_CLIP, TINY_UMT5, TINY_VAE, UMT5_XXL, VAE_STRIDES

TASKS = ("t2v", "i2v")
# I2V's conditioning: per latent frame, 4 mask channels (one per frame the VAE folds in) marking the known frame.
MASK_CHANNELS = 4


@dataclass(frozen=True)
class Flavor:
    """One size of Wan2.1: component configs, the text length and the default clip shape.

    ``predictor`` is the T2V transformer; :meth:`predictor_for` adds I2V's image branch and conditioning channels.
    """

    predictor: dict[str, Any]
    ae: dict[str, Any] = field(default_factory=lambda: dict(VAE_STRIDES))
    text_encoder: dict[str, Any] = field(default_factory=lambda: dict(UMT5_XXL))
    image_encoder: dict[str, Any] = field(default_factory=lambda: dict(CLIP_VIT_H))
    text_len: int = 512
    num_frames: int = 81
    height: int = 480
    width: int = 832
    i2v_size: tuple[int, int] = (480, 832)
    # I2V's default clip length when it differs (the tiny I2V: shorter clips keep its embedded run near a minute)
    i2v_num_frames: int | None = None
    # MindSpeed-MM's I2V inference: UniPC at flow shift 3 (None: the training shift, for the tiny model).
    i2v_flow_shift: float | None = 3.0
    fps: int = 16
    dtype: str = "bf16"

    def predictor_for(self, task: str) -> dict[str, Any]:
        """The WanTransformer3DModel arguments of ``task``: I2V takes noise, mask and first-frame latents, and CLIP
        tokens."""
        if task == "t2v":
            return dict(self.predictor)
        latent = self.ae.get("z_dim", 16)
        inner = self.predictor["num_attention_heads"] * self.predictor["attention_head_dim"]
        return {
            **self.predictor,
            "in_channels": 2 * latent + MASK_CHANNELS,
            "image_dim": self.image_encoder["hidden_size"],
            "added_kv_proj_dim": inner,
        }

    def clip_frames(self, task: str) -> int:
        """The default number of frames of ``task``'s clips."""
        return self.i2v_num_frames if task == "i2v" and self.i2v_num_frames else self.num_frames

    def clip_size(self, task: str) -> tuple[int, int]:
        """The default (height, width) of ``task``'s clips (Wan2.1-I2V-14B-480P trains and samples at 480 × 832)."""
        return (self.height, self.width) if task == "t2v" else self.i2v_size


FLAVORS: dict[str, Flavor] = {
    "tiny": Flavor(
        predictor={
            "patch_size": (1, 2, 2),
            "num_attention_heads": 4,
            "attention_head_dim": 32,
            "in_channels": 4,
            "out_channels": 4,
            "text_dim": 64,
            "freq_dim": 64,
            "ffn_dim": 256,
            "num_layers": 4,
            "rope_max_seq_len": 256,
        },
        ae=TINY_VAE,
        text_encoder=TINY_UMT5,
        image_encoder=TINY_CLIP,
        text_len=64,
        num_frames=17,
        height=64,
        width=64,
        i2v_size=(64, 64),
        i2v_num_frames=9,
        i2v_flow_shift=None,
        fps=8,
        dtype="fp32",
    ),
    "1.3b": Flavor(
        predictor={
            "patch_size": (1, 2, 2),
            "num_attention_heads": 12,
            "attention_head_dim": 128,
            "in_channels": 16,
            "out_channels": 16,
            "text_dim": 4096,
            "freq_dim": 256,
            "ffn_dim": 8960,
            "num_layers": 30,
            "rope_max_seq_len": 1024,
        },
    ),
    "14b": Flavor(
        predictor={
            "patch_size": (1, 2, 2),
            "num_attention_heads": 40,
            "attention_head_dim": 128,
            "in_channels": 16,
            "out_channels": 16,
            "text_dim": 4096,
            "freq_dim": 256,
            "ffn_dim": 13824,
            "num_layers": 40,
            "rope_max_seq_len": 1024,
        },
        height=720,
        width=1280,
    ),
}


def get_flavor(name: str) -> Flavor:
    """The flavor called ``name``, or a ConfigError listing the known ones."""
    if name not in FLAVORS:
        raise ConfigError(f"model.flavor {name!r} is not a Wan2.1 flavor (known: {', '.join(FLAVORS)})")
    return FLAVORS[name]


def get_task(name: str) -> str:
    """``name`` if it is a Wan2.1 task (model.task), else a ConfigError listing them."""
    if name not in TASKS:
        raise ConfigError(f"model.task {name!r} is not a Wan2.1 task (known: {', '.join(TASKS)})")
    return name


def task_of(transformer_config: dict[str, Any]) -> str:
    """The task of a WanTransformer3DModel config: I2V when it has an image branch."""
    return "i2v" if transformer_config.get("image_dim") else "t2v"


def flavor_of(transformer_config: dict[str, Any]) -> str | None:
    """The flavor whose transformer has the depth and width of ``transformer_config``, if any."""
    shape = ("num_layers", "num_attention_heads", "attention_head_dim")
    for name, flavor in FLAVORS.items():
        if all(transformer_config.get(key) == flavor.predictor[key] for key in shape):
            return name
    return None
