"""The options of Qwen2_5_VLConverter's subcommands, under MindSpeed-MM's names (``--cfg.hf_config.hf_dir``,
``--cfg.parallel_config.*``, ``--cfg.common_model_config.*`` ...)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mm_convert import DEFAULT_SHARD_SIZE, option


@dataclass
class HfConfig:
    """``--cfg.hf_config.*``."""

    hf_dir: Path = option(help="Hugging Face Qwen2.5-VL folder (config.json, safetensors, tokenizer ...)")


@dataclass
class ParallelConfig:
    """``--cfg.parallel_config.*``."""

    llm_pp_layers: list | int = option(help="LLM layers per PP stage, e.g. [[36]] or [[1,10,12,13]]; must match "
                                            "model.json's pipeline_num_layers")
    vit_pp_layers: list | int = option(help="vision layers per PP stage, e.g. [[32]] or [[32,0,0,0]]")
    tp_size: int = option(1, help="tensor parallel size: the mp_rank_TT shards (the vision tower split alike)")


@dataclass
class CommonModelConfig:
    """``--cfg.common_model_config.*``."""

    enable_canonical_hf_struct: bool = option(False, help="MindSpeed-MM's layout without the fused q/k/v and "
                                                          "gate/up (q_proj, k_proj, v_proj, gate_proj, up_proj apart)")


@dataclass
class LoraModelConfig(CommonModelConfig):
    """``--cfg.common_model_config.*`` of ``lora_hf_to_mm``."""

    model_prefix: str | None = option(None, help="prefix of the LoRA file's names, taken off (peft: base_model.model.)")
    new_transformers_weight_key: bool = option(False, help="names of transformers >= 4.52 (model.language_model., "
                                                           "model.visual.); either naming is read")


@dataclass
class LoraOutModelConfig(CommonModelConfig):
    """``--cfg.common_model_config.*`` of ``lora_mm_to_hf``."""

    model_prefix: str | None = option(None, help="prefix put before the adapter's names (peft: base_model.model.)")
    new_transformers_weight_key: bool = option(False, help="write the names of transformers >= 4.52 "
                                                           "(model.language_model., model.visual.)")


@dataclass
class SourceParallel:
    """``--cfg.source_parallel_config.*``: the layout the checkpoint has, checked when given."""

    llm_pp_layers: list | int | None = option(None, help="LLM layers per PP stage of the checkpoint")
    vit_pp_layers: list | int | None = option(None, help="vision layers per PP stage of the checkpoint")
    tp_size: int | None = option(None, help="tensor-parallel size of the checkpoint")


@dataclass
class OptionalHfConfig:
    """``--cfg.hf_config.*`` where it may be left out."""

    hf_dir: Path | None = option(None, help="Hugging Face Qwen2.5-VL folder: its config.json checks tp_size against "
                                            "the heads and says whether the embeddings are tied")


@dataclass
class HfToMmOptions:
    """Options of ``hf_to_mm``."""

    mm_dir: Path = option(help="MindSpeed-MM checkpoint folder to write")
    hf_config: HfConfig
    parallel_config: ParallelConfig
    common_model_config: CommonModelConfig = field(default_factory=CommonModelConfig)


@dataclass(kw_only=True)
class MmToHfOptions(HfToMmOptions):
    """Options of ``mm_to_hf``."""

    save_hf_dir: Path = option(help="Hugging Face folder to write")
    shard_size: str = option(DEFAULT_SHARD_SIZE, help="largest safetensors shard")


@dataclass
class ResplitOptions:
    """Options of ``resplit``."""

    source_dir: Path = option(help="MindSpeed-MM checkpoint folder")
    target_dir: Path = option(help="folder to write the re-cut checkpoint into")
    target_parallel_config: ParallelConfig
    source_parallel_config: SourceParallel = field(default_factory=SourceParallel)
    hf_config: OptionalHfConfig = field(default_factory=OptionalHfConfig)
    common_model_config: CommonModelConfig = field(default_factory=CommonModelConfig)


@dataclass
class LoraHfToMmOptions:
    """Options of ``lora_hf_to_mm``."""

    mm_dir: Path = option(help="MindSpeed-MM LoRA checkpoint folder to write")
    hf_config: HfConfig
    parallel_config: ParallelConfig
    common_model_config: LoraModelConfig = field(default_factory=LoraModelConfig)


@dataclass
class LoraMmToHfOptions:
    """Options of ``lora_mm_to_hf``."""

    mm_dir: Path = option(help="MindSpeed-MM LoRA checkpoint (release/ or iter_*/ with mp_rank_*), as "
                               "lora_hf_to_mm writes it or its LoRA training saves it")
    save_hf_dir: Path = option(help="peft adapter folder to write (adapter_model.safetensors, adapter_config.json)")
    parallel_config: ParallelConfig
    hf_config: OptionalHfConfig = field(default_factory=OptionalHfConfig)
    common_model_config: LoraOutModelConfig = field(default_factory=LoraOutModelConfig)
    lora_alpha: int | None = option(None, help="adapter_config.json's lora_alpha (the training's --lora-alpha); "
                                               "left out: the rank (scaling 1)")
    trust_remote_code: bool = option(False, help="accepted: Qwen2.5-VL's config is transformers' own")


@dataclass
class HfToMmDcpOptions:
    """Options of ``hf_to_mm_dcp``."""

    mm_dir: Path = option(help="folder to write the FSDP2 checkpoint into (release/ and "
                               "latest_checkpointed_iteration.txt), the --load of MindSpeed-MM's FSDP2 training")
    hf_config: HfConfig
    trust_remote_code: bool = option(False, help="accepted: Qwen2.5-VL's config is transformers' own")
    common_model_config: CommonModelConfig = field(default_factory=CommonModelConfig)


@dataclass
class DcpToHfOptions:
    """Options of ``dcp_to_hf`` (MindSpeed-MM's GenericDCPConverter dcp_to_hf)."""

    load_dir: Path = option(help="the FSDP2 checkpoint: a DCP folder (.metadata, __*_*.distcp), e.g. save_dir/release "
                                 "or save_dir/iter_0001000, or the save folder (its latest_checkpointed_iteration.txt)")
    save_dir: Path = option(help="Hugging Face folder to write")
    model_assets_dir: Path = option(help="the Hugging Face Qwen2.5-VL folder trained from: config.json, tokenizer, "
                                         "processor (copied)")
    dcp_prefix: str = option("", help="prefix of the checkpoint's names (after model.), taken off")
    hf_prefix: str = option("", help="prefix put before the names, where the checkpoint holds Hugging Face names")
    fused_linear_names: list | None = option(None, help="MoE expert weights to reshape; Qwen2.5-VL has none")
    trust_remote_code: bool = option(True, help="accepted: Qwen2.5-VL's config is transformers' own, no remote code")
    shard_size: str = option(DEFAULT_SHARD_SIZE, help="largest safetensors shard")
    common_model_config: CommonModelConfig = field(default_factory=CommonModelConfig)
