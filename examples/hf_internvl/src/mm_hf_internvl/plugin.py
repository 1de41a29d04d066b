"""The ``hf_internvl`` plugin: the guide's pretrain_transformers.py entry functions as mm hooks."""

from __future__ import annotations

import torch

from mm_core import ConfigError, ParallelPlan, hookimpl
from mm_core.config import Config
from mm_core.runtime import Runtime
from mm_data.sampler import build_dataloader
from mm_hf_internvl.data import FIRST_ANSWER, ColourQA
from mm_hf_internvl.hub import FSDP2Mixin, load_model, model_config

# A tiny InternVL (vision transformer + Qwen2 decoder) for the embedded run and tests.
TINY = {
    "vision_config": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
                      "image_size": [32, 32], "patch_size": [8, 8]},
    "text_config": {"model_type": "qwen2", "vocab_size": 64, "hidden_size": 32, "num_hidden_layers": 2,
                    "num_attention_heads": 2, "num_key_value_heads": 1, "intermediate_size": 64,
                    "max_position_embeddings": 128},
    "image_token_id": 63,
    "image_seq_length": 4,  # (32 / 8)² patches × downsample_ratio² (0.5²)
}


@hookimpl
def default_config(task: str) -> dict:
    """The model section (hub id, pretrained folder or config), the data size and a tiny embedded run."""
    return {
        "model": {"model_id": "internvl", "from_pretrained": None, "dtype": "fp32", "config": TINY},
        "data": {"num_samples": 512},
        "training": {"train_iters": 40, "micro_batch_size": 8, "global_batch_size": 8, "lr": 3.0e-3,
                     "lr_warmup_iters": 2, "bf16": False, "save_interval": 40},
        "logging": {"tensorboard": False},
    }


@hookimpl
def model_provider(config: Config, runtime: Runtime) -> torch.nn.Module:
    """The hub's model (the guide's ``TransformersModel(vlm_config)``), on the CPU; the engines place it."""
    return load_model(config.model)


@hookimpl
def parallel_plan(model: torch.nn.Module, config: Config) -> ParallelPlan:
    """The mixin's FSDP2 units, used when parallel.fsdp2.sub_modules_to_wrap names none."""
    return ParallelPlan(fsdp_modules=model.fsdp_modules() if isinstance(model, FSDP2Mixin) else ())


@hookimpl
def datasets_provider(config: Config, runtime: Runtime) -> tuple:
    """This rank's loader of generated colour questions, shaped by the model's image size and token layout."""
    hf = model_config(config.model)
    if hf.text_config.vocab_size <= FIRST_ANSWER + 4 or hf.image_token_id < FIRST_ANSWER + 4:
        raise ConfigError("model: the generated data needs token ids 1-7 free below image_token_id")
    size = hf.vision_config.image_size
    dataset = ColourQA(config.data.num_samples, size[0] if isinstance(size, (list, tuple)) else size,
                       hf.image_token_id, hf.image_seq_length, config.training.seed)
    loader = build_dataloader(dataset, config.training.micro_batch_size, runtime.dp_rank, runtime.dp_size,
                              seed=config.training.seed)
    return loader, None, None


@hookimpl
def forward_step(batch: dict, model: torch.nn.Module, runtime: Runtime):
    """transformers' forward with labels: it returns the shifted next-token loss."""
    return model(input_ids=batch["input_ids"], pixel_values=batch["pixel_values"], labels=batch["labels"])


@hookimpl
def loss_func(output, batch: dict, runtime: Runtime) -> tuple[torch.Tensor, dict]:
    """The model's own loss; counts the tokens for tokens/s."""
    return output.loss, {"tokens": float(batch["input_ids"].numel())}
