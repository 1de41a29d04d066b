"""LoRA finetuning on peft: adapters injected into a plugin's model before the engines, saved and exported alone.

``model.lora.rank > 0`` turns it on for any plugin. The trainer injects peft's LoRA layers into the model the
plugin built (module paths of the parallel plan stay valid: the adapters live inside the targeted linears), freezes
every base weight and trains the adapters only; their B matrices start at zero, so the first loss is the base
model's. Checkpoints keep the adapters and their optimizer state; the base weights come back from the model's
source. peft is imported only when LoRA is on.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from mm_core.errors import ConfigError
from mm_core.plan import ParallelPlan, Pretrained

DEFAULTS: dict[str, Any] = {"rank": 0, "alpha": None, "dropout": 0.0, "target_modules": None}
"""``model.lora``: rank 0 is off; alpha None is the rank (scale 1); target_modules None is the plugin's default."""

ADAPTER = "default"
"""peft's adapter name: parameters are ``<module>.lora_A.default.weight`` and ``<module>.lora_B.default.weight``."""

_MARKERS = (".lora_A.", ".lora_B.")


@dataclass(frozen=True)
class LoraSettings:
    """The checked ``model.lora`` section of a run with LoRA on."""

    rank: int
    alpha: float
    dropout: float
    target_modules: tuple[str, ...] | None


def settings(model_section: Mapping | None) -> LoraSettings | None:
    """``model.lora`` checked, or None when LoRA is off (no section, or rank 0)."""
    section = dict((model_section or {}).get("lora") or {})
    unknown = sorted(set(section) - set(DEFAULTS))
    if unknown:
        raise ConfigError(f"unknown key model.lora.{unknown[0]} (known here: {', '.join(DEFAULTS)})")
    lora = {**DEFAULTS, **section}
    rank = lora["rank"]
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 0:
        raise ConfigError(f"model.lora.rank must be a whole number >= 0 (0: LoRA off), got {rank!r}")
    if rank == 0:
        return None
    alpha = rank if lora["alpha"] is None else lora["alpha"]
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or alpha <= 0:
        raise ConfigError(f"model.lora.alpha must be a positive number, got {alpha!r}")
    dropout = lora["dropout"]
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ConfigError(f"model.lora.dropout must be a number in [0, 1), got {dropout!r}")
    targets = lora["target_modules"]
    if isinstance(targets, str):
        targets = [t for t in re.split(r"[,\s]+", targets) if t]
    if targets is not None and (not targets or not all(isinstance(t, str) and t for t in targets)):
        raise ConfigError(f"model.lora.target_modules must be a list of module name patterns, got {targets!r}")
    return LoraSettings(rank, float(alpha), float(dropout), None if targets is None else tuple(targets))


def enabled(config: Mapping) -> bool:
    """True when the config's ``model.lora.rank`` is above 0."""
    return bool(((config.get("model") or {}).get("lora") or {}).get("rank"))


def has_adapters(model: torch.nn.Module) -> bool:
    """True when ``model`` holds LoRA adapter parameters."""
    return any(any(m in name for m in _MARKERS) for name, _ in model.named_parameters())


# What engines put into parameter names that state dicts leave out: DDP's module, compile's, activation checkpointing's.
_WRAPPERS = re.compile(r"^module\.|_orig_mod\.|_checkpoint_wrapped_module\.")


def without_frozen(model: torch.nn.Module, state: dict[str, Any]) -> dict[str, Any]:
    """``state`` (the model's state dict) without frozen base weights when ``model`` has adapters; else as it is.

    Weights tied to a frozen one (an LLM's output head) go too: they are the same tensor under another name.
    """
    if not has_adapters(model):
        return state
    frozen = {_WRAPPERS.sub("", name) for name, param in model.named_parameters(remove_duplicate=False)
              if not param.requires_grad}
    return {key: value for key, value in state.items() if key not in frozen}


def is_adapter(key: str) -> bool:
    """True for the state-dict key of a LoRA adapter weight."""
    return any(m in key for m in _MARKERS)


def _pattern(target: str) -> re.Pattern:
    """A target as a regex over module names: the name itself or its dotted tail; ``*`` is one name part."""
    body = r"[^.]+".join(re.escape(part) for part in target.split("*"))
    return re.compile(rf"(?:.*\.)?{body}")


def matches(target: str, name: str) -> bool:
    """Whether the target pattern ``target`` names the module ``name``."""
    return _pattern(target).fullmatch(name) is not None


def resolve(model: torch.nn.Module, targets: Iterable[str], each: bool = True) -> list[str]:
    """The names of the modules the target patterns match: each pattern one at least (``each``), else any."""
    names = [name for name, _ in model.named_modules() if name]
    found: dict[str, None] = {}
    targets = list(targets)
    for target in targets:
        regex = _pattern(target)
        hits = [name for name in names if regex.fullmatch(name)]
        if not hits and each:
            raise ConfigError(f"model.lora.target_modules entry {target!r} matches no module of the model "
                              f"(linear modules are named like: {_linears(model)})")
        found.update(dict.fromkeys(hits))
    if not found:
        raise ConfigError(f"model.lora.target_modules {targets} match no module of the model "
                          f"(linear modules are named like: {_linears(model)})")
    return list(found)


def _linears(model: torch.nn.Module) -> str:
    return ", ".join([n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)][:6]) or "none"


def _lora_config(lora: LoraSettings, targets: list[str]):
    from peft import LoraConfig

    return LoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=targets,
                      bias="none")


def inject(model: torch.nn.Module, lora: LoraSettings, targets: Iterable[str], each: bool = True) -> list[str]:
    """Put LoRA adapters into ``model`` in place, freeze everything else; returns the adapted module names."""
    from peft import inject_adapter_in_model

    names = resolve(model, targets, each)
    try:
        inject_adapter_in_model(_lora_config(lora, names), model, adapter_name=ADAPTER)
    except ValueError as exc:
        raise ConfigError(f"model.lora.target_modules: {exc}") from exc
    for name, param in model.named_parameters():
        param.requires_grad_(is_adapter(name))
    return names


def summary(model: torch.nn.Module) -> str:
    """``LoRA: N trainable of M parameters (x%)`` of an adapted model."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return f"LoRA: {trainable:,} trainable of {total:,} parameters ({100 * trainable / max(total, 1):.2f}%)"


def apply(model: torch.nn.Module, plan: ParallelPlan, config) -> tuple[ParallelPlan, str]:
    """Adapt the plugin's model before the engines; the plan with LoRA-aware pretrained weights, and the summary.

    The resolved ``target_modules`` are written back into ``config.model.lora``, so the run's saved config says
    which modules carry adapters (``mm infer`` and the export rebuild them from it).
    """
    lora = settings(config.model)
    if config.parallel.tp.size > 1:
        raise ConfigError("model.lora (LoRA) and parallel.tp.size > 1 (tensor parallelism) do not combine: the "
                          "adapters of a split linear are not split with it; use FSDP2, CP or PP with LoRA")
    targets = lora.target_modules or plan.lora_targets
    if not targets:
        raise ConfigError("model.lora.target_modules is not set and the plugin names no default "
                          "(ParallelPlan.lora_targets): list the module name patterns to adapt")
    on_meta = any(t.is_meta for t in model.parameters())
    if on_meta and plan.pretrained is None:
        raise ConfigError("LoRA on a model built on the meta device needs its pretrained weights "
                          "(ParallelPlan.pretrained): adapters train on a base model")
    names = inject(model, lora, targets, each=bool(lora.target_modules))
    matched = [t for t in targets if any(matches(t, n) for n in names)]
    config.model["lora"] = type(config.model)(
        rank=lora.rank, alpha=lora.alpha, dropout=lora.dropout, target_modules=matched)
    if on_meta:
        plan = replace(plan, pretrained=adapted_pretrained(plan.pretrained, names, model, config.training.seed))
    return plan, summary(model)


def initial_adapters(model: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """Fresh adapter weights as peft draws them (A Kaiming-uniform, B zero), from ``seed``, on the CPU."""
    generator = torch.Generator().manual_seed(seed)
    weights = {}
    for name, param in model.named_parameters():
        if not is_adapter(name):
            continue
        value = torch.zeros(param.shape, dtype=param.dtype)
        if ".lora_A." in name:
            bound = 1 / math.sqrt(param.shape[1])  # kaiming_uniform_(a=sqrt(5)) of an (r, in) weight
            value.uniform_(-bound, bound, generator=generator)
        weights[name] = value
    return weights


def adapted_pretrained(source: Pretrained, adapted: list[str], model: torch.nn.Module,
                       seed: int) -> Callable[[], dict[str, torch.Tensor]]:
    """``source`` (a base model's state dict function or DCP dir) as the full state dict of the adapted model."""
    prefixes = tuple(f"{name}." for name in adapted)

    def load() -> dict[str, torch.Tensor]:
        base = source() if callable(source) else read_dcp_model(Path(source))
        state = {}
        for key, value in base.items():
            owner = next((p for p in prefixes if key.startswith(p) and "." not in key[len(p):]), None)
            state[f"{owner}base_layer.{key[len(owner):]}" if owner else key] = value
        return {**state, **initial_adapters(model, seed)}

    return load


def read_dcp_model(path: Path) -> dict[str, torch.Tensor]:
    """The whole ``model`` state of a DCP checkpoint directory, in this process's memory."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    # The planner fills the empty dict with everything the checkpoint holds; this process alone reads it.
    state: dict[str, Any] = {}
    _load_state_dict(state, FileSystemReader(str(path)), planner=_EmptyStateDictLoadPlanner(), no_dist=True)
    model = state.get("model", {})
    return {k: v for k, v in model.items() if isinstance(v, torch.Tensor)}


def checkpoint_settings(path: Path) -> LoraSettings | None:
    """The LoRA settings and adapted modules of an mm checkpoint of a LoRA run (its config.yaml), else None."""
    from mm_core.config import load_file

    config_file = Path(path) / "config.yaml"
    if not config_file.is_file():
        return None
    lora = settings(load_file(config_file).get("model"))
    if lora is None:
        return None
    if not lora.target_modules:
        raise ConfigError(f"{config_file} turns LoRA on but names no model.lora.target_modules")
    return lora


def rebuild(checkpoint: Path) -> torch.nn.Module:
    """The model of a LoRA run's checkpoint in this process, on the CPU: its plugins build the base, adapters load."""
    from mm_core.checkpoint import CONFIG_FILE, TRAINER_STATE, load_model_state
    from mm_core.config import load_file, wrap
    from mm_core.errors import CheckpointError
    from mm_core.plugins import load_plugins
    from mm_core.runtime import create_runtime
    from mm_core.trainer import model_plan

    checkpoint = Path(checkpoint)
    plugins = torch.load(checkpoint / TRAINER_STATE, weights_only=False).get("plugins")
    if not plugins:
        raise CheckpointError(f"{checkpoint} does not name the plugins that built its model (it predates LoRA "
                              "export): its base model cannot be rebuilt")
    config = wrap(load_file(checkpoint / CONFIG_FILE))
    for dim in ("cp", "pp", "tp"):
        config.parallel[dim]["size"] = 1
    config.training["device"] = "cpu"
    pm = load_plugins(plugins)
    runtime = create_runtime(config)
    model = pm.hook.model_provider(config=config, runtime=runtime)
    plan, _ = apply(model, model_plan(pm.hook, model, config), config)
    if any(t.is_meta for t in model.parameters()):
        model.to_empty(device="cpu")
        model.load_state_dict(plan.pretrained(), strict=True)
    load_model_state(checkpoint, model)
    return model.eval()


def merge(model: torch.nn.Module) -> torch.nn.Module:
    """Fold every adapter into its base weight and put the plain layer back in its place; returns ``model``."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    adapted = [(name, module) for name, module in model.named_modules() if isinstance(module, BaseTunerLayer)]
    for name, module in adapted:
        module.merge()
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, module.get_base_layer())
    return model


def adapter_root(model: torch.nn.Module) -> tuple[str, torch.nn.Module]:
    """The outermost loadable model (``from_pretrained`` and ``save_pretrained``: a diffusers or transformers model)
    holding every adapter, and its path: the Wan transformer ``predictor``, the whole VLM; else ``model`` itself.

    peft's adapter files name modules from there, as ``PeftModel.from_pretrained`` of that model expects them.
    """
    adapters = [name for name, _ in model.named_parameters() if is_adapter(name)]
    for path, module in model.named_modules():
        prefix = f"{path}." if path else ""
        loadable = all(callable(getattr(module, m, None)) for m in ("from_pretrained", "save_pretrained"))
        if loadable and all(a.startswith(prefix) for a in adapters):
            return path, module
    return "", model


def peft_adapter(model: torch.nn.Module, lora: LoraSettings) -> tuple[Any, dict[str, torch.Tensor], str]:
    """peft's LoraConfig, adapter weights (keys as ``PeftModel.save_pretrained`` writes them) and root path."""
    path, root = adapter_root(model)
    prefix = f"{path}." if path else ""
    adapted = sorted({name.split(".lora_")[0][len(prefix):] for name, _ in model.named_parameters()
                      if is_adapter(name)})
    weights = {f"base_model.model.{name[len(prefix):]}".replace(f".{ADAPTER}.", "."): param.detach().contiguous()
               for name, param in model.named_parameters() if is_adapter(name)}
    return _lora_config(lora, adapted), weights, path
