"""SoraConverter: MindSpeed-MM's SoraModelConverter subcommands, written once for every video family.

``mm_to_dcp``, ``layerzero_to_mm``, ``lora_hf_to_mm`` and ``merge_lora_to_base`` take MindSpeed-MM's options
(``ConvertConfig``: ``source_path``, ``target_path``, ``lora_path``, ``target_parallel_config.tp_size`` /
``pp_layers``; ``--lora_rank``, ``--lora_alpha`` ...). A family's converter inherits SoraConverter and names its
MindSpeed-MM pipeline (``pipeline``), its tensor-parallel split (``tp_split``, None: no tensor parallelism) and the
namings of LoRA files it reads (``lora_rules``). Every MindSpeed-MM checkpoint these read may be a Megatron one
(``release/`` or ``iter_*/`` with ``mp_rank_*``, any TP/PP) or an FSDP2 one (DCP).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from mm_convert.converter import Converter, subcommand
from mm_convert.dcp_layout import find_dcp, read_mindspeed_dcp, write_mindspeed_dcp
from mm_convert.errors import ConvertError
from mm_convert.layerzero import read_layerzero
from mm_convert.lora_weights import convert_lora, lora_split_rule, merge_lora
from mm_convert.megatron_layout import STALE, Layout, PipelineSpec, parse_layout, read_megatron, write_megatron
from mm_convert.options import option
from mm_convert.publish import staged_output
from mm_convert.rules import RuleSet, rename
from mm_convert.safetensors_io import read_safetensors
from mm_convert.sources import TensorSource
from mm_convert.tp_split import SplitRule, merge_tp, split_tp

PARALLEL_OPTION = "--cfg.target_parallel_config"


@dataclass
class ParallelTarget:
    """``--cfg.target_parallel_config.*``: the MindSpeed-MM layout to write."""

    tp_size: int = option(1, help="tensor-parallel size (mp_rank_TT folders)")
    pp_layers: list = option([], help="layers per PP stage, [8,8], or per VPP chunk [[4,4],[4,4]]; [] one stage")


@dataclass
class MmToDcpOptions:
    """Options of ``mm_to_dcp``."""

    source_path: Path = option(help="MindSpeed-MM checkpoint (release/ or iter_*/ with mp_rank_*, any TP/PP)")
    target_path: Path = option(help="folder to write release/ (DCP) and latest_checkpointed_iteration.txt into; "
                                    "may be the source folder (its mp_rank_* stay)")
    version: str | None = option(None, help="the family's version where it has versions (OpenSoraPlan v1.3)")


@dataclass
class LayerzeroOptions:
    """Options of ``layerzero_to_mm``."""

    source_path: Path = option(help="a LayerZero training's save folder (iter_XXXXXXX/model_<rank>.pt)")
    target_path: Path = option(help="MindSpeed-MM checkpoint folder to write")
    target_parallel_config: ParallelTarget = field(default_factory=ParallelTarget)
    iteration: int | None = option(None, help="the iteration to convert; none: the newest iter_*")
    prefix: str = option("predictor", help="the model's module prefix in the shards, taken off the names")
    ema_model: bool = option(False, help="convert the EMA weights (ema_model) instead of the model's")
    version: str | None = option(None, help="the family's version where it has versions (OpenSoraPlan v1.3)")


@dataclass
class LoraHfToMmOptions:
    """Options of ``lora_hf_to_mm``."""

    source_path: Path = option(help="LoRA safetensors: a folder (one file or an index) or a .safetensors file, "
                                    "in diffusers, Wan-AI / DiffSynth or peft names")
    target_path: Path = option(help="MindSpeed-MM checkpoint folder to write (lora_A.default / lora_B.default)")
    target_parallel_config: ParallelTarget = field(default_factory=ParallelTarget)
    hf_dir: Path | None = option(None, help="the base transformer folder, for its config.json where the family "
                                            "needs it (Step-Video: its heads)")
    version: str | None = option(None, help="the family's version where it has versions (OpenSoraPlan v1.3)")


@dataclass
class MergeLoraOptions:
    """Options of ``merge_lora_to_base``."""

    source_path: Path = option(help="the base MindSpeed-MM checkpoint (Megatron or FSDP2 DCP)")
    lora_path: Path = option(help="the LoRA: a MindSpeed-MM checkpoint of a LoRA training (Megatron or DCP), or "
                                  "LoRA safetensors as lora_hf_to_mm reads them")
    target_path: Path = option(help="MindSpeed-MM checkpoint folder to write the merged weights into")
    target_parallel_config: ParallelTarget = field(default_factory=ParallelTarget)
    lora_rank: int = option(8, help="the LoRA's rank (--lora-r of the training)")
    lora_alpha: float = option(16.0, help="the LoRA's alpha (--lora-alpha): W + alpha / rank * B @ A")
    use_npu: bool = option(True, help="MindSpeed-MM merges on an NPU; mm merges on the CPU, in float32")
    hf_dir: Path | None = option(None, help="the base transformer folder, for its config.json where the family "
                                            "needs it to read LoRA safetensors (Step-Video: its heads)")
    version: str | None = option(None, help="the family's version where it has versions (OpenSoraPlan v1.3)")


def _replicated(key: str) -> None:
    return None


def read_mm_checkpoint(path: str | Path, spec: PipelineSpec, tp_rule: SplitRule | None,
                       option_name: str = "--cfg.source_path") -> TensorSource:
    """The whole tensors of a MindSpeed-MM checkpoint: Megatron (stages and TP ranks merged) or FSDP2 (DCP)."""
    path = Path(path)
    if not path.is_dir():
        raise ConvertError(f"{option_name} {path} is not a directory")
    if any(path.glob("*/mp_rank_*")):
        checkpoint = read_megatron(path, spec)
        if len(checkpoint.sources) > 1 and tp_rule is None:
            raise ConvertError(f"{path} has {len(checkpoint.sources)} tensor-parallel ranks; this model has no "
                               "tensor parallelism")
        return merge_tp(checkpoint.sources, lora_split_rule(tp_rule or _replicated))
    if find_dcp(path) is None:
        raise ConvertError(f"{option_name} {path} is neither a MindSpeed-MM checkpoint (release/ or iter_*/ with "
                           "mp_rank_*) nor an FSDP2 one (a .metadata in it, its release/ or iter_*/)")
    return read_mindspeed_dcp(path, spec.stacks)


def layer_count(source: TensorSource, spec: PipelineSpec) -> int:
    """How many layers of ``spec``'s first stack ``source`` holds (its highest index + 1)."""
    stack = spec.stacks[0]
    return 1 + max((i for key in source if (i := stack.layer_of(key)) is not None), default=-1)


class SoraConverter(Converter):
    """A video family's converter with MindSpeed-MM's SoraModelConverter subcommands (its pipeline, TP split and
    LoRA namings given by the family)."""

    pipeline: ClassVar[PipelineSpec]
    tp_split: ClassVar[SplitRule | None] = None  # as staticmethod(rule); None: the model has no tensor parallelism
    versions: ClassVar[tuple[str, ...]] = ()

    def lora_rules(self, hf_dir: Path | None) -> Sequence[RuleSet]:
        """The namings of LoRA files (each RuleSet's hf side) -> MindSpeed-MM's names; ``hf_dir`` the base folder."""
        raise NotImplementedError

    def _check_version(self, version: str | None) -> None:
        if version is not None and version not in self.versions:
            supported = f"supported: {', '.join(self.versions)}" if self.versions else "it has no versions"
            raise ConvertError(f"{self.name} --version {version!r} is not supported ({supported})")

    def _lora_namings(self, hf_dir: Path | None) -> list[RuleSet]:
        rule_sets = list(self.lora_rules(hf_dir))
        names = dict.fromkeys(rule.mm for rules in rule_sets for rule in rules.rules)
        return [*rule_sets, RuleSet([rename(name, name) for name in names])]  # files already in MindSpeed-MM names

    def _read(self, path: Path, option_name: str = "--cfg.source_path") -> TensorSource:
        return read_mm_checkpoint(path, self.pipeline, self.tp_split, option_name)

    def _lora_file(self, path: Path, hf_dir: Path | None) -> TensorSource:
        return convert_lora(read_safetensors(path), self._lora_namings(hf_dir))

    def _read_lora(self, path: Path, hf_dir: Path | None) -> TensorSource:
        path = Path(path)
        if path.is_file() or any(path.glob("*.safetensors")):
            return self._lora_file(path, hf_dir)
        return self._read(path, "--cfg.lora_path")

    def _write(self, target: Path, tensors: TensorSource, parallel: ParallelTarget,
               sparse: bool = False) -> tuple[int, Layout]:
        if parallel.tp_size != 1 and self.tp_split is None:
            raise ConvertError(f"{self.name} has no tensor parallelism: {PARALLEL_OPTION}.tp_size must be 1, "
                               f"got {parallel.tp_size}")
        layout = parse_layout(parallel.pp_layers or layer_count(tensors, self.pipeline), f"{PARALLEL_OPTION}.pp_layers")
        rule = lora_split_rule(self.tp_split or _replicated)
        with staged_output(target, stale=STALE) as out:
            write_megatron(out, split_tp(tensors, parallel.tp_size, rule, f"{PARALLEL_OPTION}.tp_size"),
                           {self.pipeline.stacks[0].name: layout}, self.pipeline, sparse)
        return parallel.tp_size, layout

    @subcommand(MmToDcpOptions)
    def mm_to_dcp(self, opts: MmToDcpOptions) -> str:
        """MindSpeed-MM checkpoint (any TP/PP) -> torch DCP (release/) as MindSpeed-MM's FSDP2 training loads it."""
        self._check_version(opts.version)
        tensors = self._read(opts.source_path)
        folder = write_mindspeed_dcp(opts.target_path, tensors)
        return f"mm_to_dcp {opts.source_path} -> {folder} ({len(tensors)} tensors)"

    @subcommand(LayerzeroOptions)
    def layerzero_to_mm(self, opts: LayerzeroOptions) -> str:
        """LayerZero training checkpoint (iter_*/model_<rank>.pt) -> MindSpeed-MM checkpoint."""
        self._check_version(opts.version)
        tensors = read_layerzero(opts.source_path, opts.iteration, opts.prefix, opts.ema_model)
        tp, layout = self._write(opts.target_path, tensors, opts.target_parallel_config)
        return f"layerzero_to_mm {tensors.where} -> {opts.target_path} (tp {tp}, layers per stage {layout})"

    @subcommand(LoraHfToMmOptions)
    def lora_hf_to_mm(self, opts: LoraHfToMmOptions) -> str:
        """LoRA safetensors (diffusers / Wan-AI / DiffSynth / peft names) -> MindSpeed-MM LoRA checkpoint."""
        self._check_version(opts.version)
        tensors = self._lora_file(opts.source_path, opts.hf_dir)
        tp, layout = self._write(opts.target_path, tensors, opts.target_parallel_config, sparse=True)
        return (f"lora_hf_to_mm {opts.source_path} -> {opts.target_path} ({len(tensors) // 2} LoRA pairs, tp {tp}, "
                f"layers per stage {layout})")

    @subcommand(MergeLoraOptions)
    def merge_lora_to_base(self, opts: MergeLoraOptions) -> str:
        """Base MindSpeed-MM checkpoint + LoRA -> merged MindSpeed-MM checkpoint, W + lora_alpha / lora_rank * B @ A."""
        self._check_version(opts.version)
        if opts.lora_rank <= 0:
            raise ConvertError(f"--lora_rank must be at least 1, got {opts.lora_rank}")
        scaling = opts.lora_alpha / opts.lora_rank
        base = self._read(opts.source_path)
        merged = merge_lora(base, self._read_lora(opts.lora_path, opts.hf_dir), scaling)
        tp, layout = self._write(opts.target_path, merged, opts.target_parallel_config)
        return (f"merge_lora_to_base {opts.source_path} + {opts.lora_path} (scaling {scaling:g}) -> "
                f"{opts.target_path} (tp {tp}, layers per stage {layout})")

