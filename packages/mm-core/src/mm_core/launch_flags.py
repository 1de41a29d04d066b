"""Megatron / MindSpeed-MM launch flags (``--micro-batch-size 1 --use-torch-fsdp2 ...``) as mm's config.

A MindSpeed-MM launch script runs unchanged once ``pretrain_xxx.py`` is replaced by ``mm run --plugin X``: each
flag becomes a section file (``--mm-model`` is ``--model``) or a dotted override (``--mm-tool``'s tools.json: see
:mod:`mm_core.tools_json`), and flags that only tune Megatron's or Ascend's kernels are accepted with a one-line
warning naming them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from mm_core import tools_json
from mm_core.errors import ConfigError

log = logging.getLogger("mm")

CP_ALGOS = {"ulysses_cp_algo": "ulysses", "megatron_cp_algo": "ring", "hybrid_cp_algo": "usp"}

# Section files: MindSpeed-MM's flag -> mm's flag.
SECTION_FLAGS = {"--mm-model": "--model", "--mm-data": "--data", "--fsdp2-config-path": "--fsdp2-config"}


def _cp_algo(value: str) -> str:
    if value not in CP_ALGOS:
        raise ConfigError(f"--context-parallel-algo {value!r}: expected one of {', '.join(CP_ALGOS)}")
    return CP_ALGOS[value]


@dataclass(frozen=True)
class Flag:
    """A flag's config key(s): the first that the plugin's config has is set. Without ``convert`` it is a switch."""

    keys: tuple[str, ...]
    convert: Callable[[str], object] | None = str
    value: object = True


def _value(*keys: str, convert: Callable[[str], object] = str) -> Flag:
    return Flag(keys, convert)


def _switch(key: str, value: object = True) -> Flag:
    return Flag((key,), None, value)


FLAGS: dict[str, Flag] = {
    "--micro-batch-size": _value("training.micro_batch_size", convert=int),
    "--global-batch-size": _value("training.global_batch_size", convert=int),
    "--train-iters": _value("training.train_iters", convert=int),
    "--lr": _value("training.lr", convert=float),
    "--min-lr": _value("training.min_lr", convert=float),
    "--lr-decay-style": _value("training.lr_decay_style"),
    "--lr-decay-iters": _value("training.lr_decay_iters", convert=int),
    "--lr-warmup-iters": _value("training.lr_warmup_iters", convert=int),
    "--lr-warmup-fraction": _value("training.lr_warmup_fraction", convert=float),
    "--lr-warmup-init": _value("training.lr_warmup_init", convert=float),
    "--weight-decay": _value("training.weight_decay", convert=float),
    "--adam-beta1": _value("training.adam_beta1", convert=float),
    "--adam-beta2": _value("training.adam_beta2", convert=float),
    "--adam-eps": _value("training.adam_eps", convert=float),
    "--clip-grad": _value("training.clip_grad", convert=float),
    "--seed": _value("training.seed", convert=int),
    "--bf16": _switch("training.bf16"),
    "--load": _value("model.from_pretrained"),  # the weights to start from (mm run --resume continues a run)
    "--save": _value("training.output_dir"),
    "--save-interval": _value("training.save_interval", convert=int),
    "--eval-interval": _value("training.eval_interval", convert=int),
    "--eval-iters": _value("training.eval_iters", convert=int),
    "--log-interval": _value("logging.log_interval", convert=int),
    "--num-workers": _value("data.dataloader_param.num_workers", convert=int),
    "--seq-length": _value("data.dataset_param.basic_parameters.cutoff_len", convert=int),
    "--use-torch-fsdp2": _switch("parallel.fsdp2.enable"),
    "--context-parallel-size": _value("parallel.cp.size", convert=int),
    "--context-parallel-algo": _value("parallel.cp.mode", convert=_cp_algo),
    "--ulysses-degree-in-cp": _value("parallel.cp.ulysses_degree", convert=int),
    "--cp-window-size": _value("parallel.cp.window_size", convert=int),
    "--pipeline-model-parallel-size": _value("parallel.pp.size", convert=int),
    "--virtual-pipeline-model-parallel-size": _value("parallel.pp.virtual_stages", convert=int),
    "--tensor-model-parallel-size": _value("parallel.tp.size", convert=int),
    "--sequence-parallel": _switch("parallel.tp.sequence_parallel"),
    "--recompute-granularity": _value("parallel.recompute.granularity"),
    "--recompute-method": _value("parallel.recompute.method"),
    "--recompute-num-layers": _value("parallel.recompute.num_layers", convert=int),
    "--dpo-beta": _value("training.dpo_beta", convert=float),
    "--dpo-loss-type": _value("training.dpo_loss_type"),
    "--dpo-label-smoothing": _value("training.dpo_label_smoothing", convert=float),
    "--pref-ftx": _value("training.pref_ftx", convert=float),
    "--lora-r": _value("model.lora.rank", convert=int),
    "--lora-alpha": _value("model.lora.alpha", convert=float),
    "--lora-dropout": _value("model.lora.dropout", convert=float),
}
MULTI_VALUE = {"--lora-target-modules": "model.lora.target_modules"}

# Flags that tune Megatron's or Ascend's kernels, or name things mm does its own way: accepted, with a warning.
IGNORED_WITH_VALUE = {
    "--ckpt-format": "mm always writes torch.distributed.checkpoint (DCP) and reads MindSpeed-MM's formats",
    "--distributed-backend": "mm picks nccl, hccl or gloo from the device",
    "--distributed-timeout-minutes": "mm uses torch's default process-group timeout",
    "--tokenizer-type": "the plugin builds its tokenizer from the model section",
    "--vocab-size": "the vocabulary comes from the model",
    "--make-vocab-size-divisible-by": "the vocabulary comes from the model",
    "--normalization": "the norm comes from the model",
    "--attention-mask-type": "the plugin builds its attention masks",
    "--optimizer-selection": "mm uses torch's AdamW, fused on accelerators",
    "--optimization-level": "an Ascend kernel-fusion level",
    "--layerzero-config": "mm shards with FSDP2 (--use-torch-fsdp2 --fsdp2-config-path)",
    "--recompute-num-layers-skip-core-attention": "use parallel.fsdp2.recompute_mode=selective",
}
IGNORED_SWITCHES = {
    "--use-mcore-models": "mm builds the plugin's model",
    "--fp16": "the model section's dtypes (and --bf16's autocast) set the precision; fp16 loss scaling is not offered",
    "--use-fused-rmsnorm": "an Ascend fused kernel",
    "--use-fused-swiglu": "an Ascend fused kernel",
    "--use-fused-rotary-pos-emb": "an Ascend fused kernel",
    "--use-flash-attn": "attention runs on torch's fused SDPA kernels",
    "--allow-tf32": "torch's default matmul precision applies",
    "--swiglu": "the activation comes from the model",
    "--no-masked-softmax-fusion": "a Megatron kernel switch",
    "--no-gradient-accumulation-fusion": "a Megatron kernel switch",
    "--use-distributed-optimizer": "FSDP2 shards the optimizer state",
    "--overlap-grad-reduce": "FSDP2 overlaps its reduce-scatters",
    "--overlap-param-gather": "FSDP2 overlaps its all-gathers",
    "--untie-embeddings-and-output-weights": "tying comes from the model",
    "--use-cpu-initialization": "large models are built on the meta device",
    "--init-model-with-meta-device": "large models are built on the meta device",
    "--no-initialization": "large models are built on the meta device",
    "--log-tps": "mm logs tokens per second",
    "--variable-seq-lengths": "mm batches variable lengths itself",
    "--no-load-optim": "--load gives the model's weights only; the optimizer starts fresh",
    "--no-load-rng": "--load gives the model's weights only; the RNG starts from --seed",
    "--no-save-optim": "mm checkpoints always hold the optimizer (resume is exact)",
    "--no-save-rng": "mm checkpoints always hold the RNG (resume is exact)",
    "--layerzero": "mm shards with FSDP2 (--use-torch-fsdp2)",
    "--recompute-skip-core-attention": "use parallel.fsdp2.recompute_mode=selective",
    "--use-multiparameter-pipeline-model-parallel": "mm's pipeline passes tuples between stages",
}


@dataclass
class LaunchFlags:
    """What the MindSpeed-MM flags of one command line mean to mm."""

    argv: list[str] = field(default_factory=list)
    """The command line with the translated flags taken out and section-file flags renamed."""
    settings: list[tuple[str, tuple[str, ...], object]] = field(default_factory=list)
    """``(flag, candidate keys, value)``: the first candidate the plugin's config has is set."""
    ignored: list[str] = field(default_factory=list)
    """One warning line per flag mm has no use for."""

    def overrides(self, defaults: Mapping) -> list[str]:
        """Dotted overrides for ``defaults`` (the plugin's config); warns about flags the plugin has no key for."""
        out = []
        for flag, keys, value in self.settings:
            key = next((k for k in keys if _has_key(defaults, k)), None)
            if key is None:
                log.warning("warning: %s has no meaning for this plugin (no %s in its config); ignored",
                            flag, " or ".join(keys))
                continue
            out.append(f"{key}={_literal(value)}")
        return out

    def warn(self) -> None:
        """Log the flags accepted without effect."""
        for line in self.ignored:
            log.warning("warning: %s", line)


def _has_key(defaults: Mapping, dotted: str) -> bool:
    node: object = defaults
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False
        node = node[part]
    return True


def _literal(value: object) -> str:
    """``value`` as the text of a dotted override (YAML), lists in flow style."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(_literal(v) for v in value) + "]"
    if isinstance(value, str):
        return value if value and ":" not in value and not value.startswith(("[", "{")) else repr(value)
    return str(value)


def translate(argv: Sequence[str]) -> LaunchFlags:
    """Split MindSpeed-MM's launch flags out of ``argv``; the rest stays for mm's own parser."""
    out = LaunchFlags()
    items = list(argv)
    while items:
        token = items.pop(0)
        name, eq, inline = token.partition("=")
        known = name in FLAGS or name in MULTI_VALUE or name in IGNORED_WITH_VALUE or name in IGNORED_SWITCHES
        if name in SECTION_FLAGS:
            out.argv += [SECTION_FLAGS[name], inline if eq else _take(items, name)]
        elif name == tools_json.FLAG:
            tools = tools_json.read_tools(inline if eq else _take(items, name))
            out.settings += tools.settings
            out.ignored += tools.ignored
        elif not known:
            out.argv.append(token)
        elif name in MULTI_VALUE:
            values = [inline] if eq else []
            while items and not items[0].startswith("--"):
                values.append(items.pop(0))
            if not values:
                raise ConfigError(f"{name} needs at least one value")
            out.settings.append((name, (MULTI_VALUE[name],), values))
        elif name in IGNORED_WITH_VALUE:
            value = inline if eq else _take(items, name)
            out.ignored.append(f"{name} {value}: accepted and ignored ({IGNORED_WITH_VALUE[name]})")
        elif name in IGNORED_SWITCHES:
            out.ignored.append(f"{name}: accepted and ignored ({IGNORED_SWITCHES[name]})")
        else:
            flag = FLAGS[name]
            if flag.convert is None:
                out.settings.append((name, flag.keys, flag.value))
                continue
            text = inline if eq else _take(items, name)
            try:
                value = flag.convert(text)
            except ValueError:
                raise ConfigError(f"{name} {text!r}: expected {flag.convert.__name__}") from None
            out.settings.append((name, flag.keys, value))
    return out


def _take(items: list[str], name: str) -> str:
    if not items or items[0].startswith("--"):
        raise ConfigError(f"{name} needs a value")
    return items.pop(0)
