"""FSDP2 (``torch.distributed.fsdp.fully_shard``) driven by the options of the seeds' fsdp2_config.yaml."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import CPUOffloadPolicy, FSDPModule, MixedPrecisionPolicy, OffloadPolicy, fully_shard

from mm_core import dtypes
from mm_core.errors import ConfigError
from mm_core.runtime import Runtime
from mm_parallel.patterns import expand

log = logging.getLogger("mm")

# parallel.fsdp2 with the seeds' defaults; "-" in their table means: torch's default.
FSDP2_DEFAULTS: dict[str, Any] = {
    "enable": False,
    "sharding_size": None,  # auto: every data-parallel rank; an int < dp size gives HSDP
    "param_dtype": None,  # None keeps the model's dtype
    "reduce_dtype": None,
    "output_dtype": None,
    "cast_forward_inputs": True,
    "sub_modules_to_wrap": [],
    "ignored_modules": [],
    "recompute_modules": [],
    "recompute_mode": "selective",  # mm's own key: full | selective (attention outputs kept, exact)
    "use_reentrant": True,  # full mode only; selective is always non-reentrant
    "reshard_after_forward": True,
    "offload_to_cpu": False,
    "pin_memory": False,
    "num_to_forward_prefetch": 0,
    "num_to_backward_prefetch": 1,
}


def parse_dtype(value: str | None, key: str) -> torch.dtype | None:
    """The torch dtype named by ``value`` (bf16, fp16, fp32), or None to keep the model's."""
    return None if value is None else dtypes.parse_dtype(value, f"parallel.fsdp2.{key}")


def check_options(options: Mapping[str, Any]) -> None:
    """Raise one ConfigError for a parallel.fsdp2 value the schema's types cannot catch."""
    for key in ("param_dtype", "reduce_dtype", "output_dtype"):
        parse_dtype(options.get(key), key)
    for key in ("num_to_forward_prefetch", "num_to_backward_prefetch"):
        if options[key] < 0:
            raise ConfigError(f"parallel.fsdp2.{key} must be 0 or more, got {options[key]}")


def data_parallel_mesh(runtime: Runtime) -> DeviceMesh:
    """The mesh FSDP2 shards over: ``dp_shard``, or ``(dp_replicate, dp_shard)`` for HSDP.

    With context parallelism the cp ranks join the shard dim (``dp_shard_cp``): they hold different
    tokens of the same samples, so their gradients are averaged like data-parallel ones.
    """
    shard = "dp_shard_cp" if runtime.dims["cp"] > 1 else "dp_shard"
    if runtime.dims["dp_replicate"] > 1:
        return runtime.mesh["dp_replicate", shard]
    return runtime.submesh(shard)


def fsdp_kwargs(options: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    """Keyword arguments of ``fully_shard`` (mp_policy, offload_policy, reshard_after_forward) from the options."""
    mp_policy = MixedPrecisionPolicy(
        param_dtype=parse_dtype(options["param_dtype"], "param_dtype"),
        reduce_dtype=parse_dtype(options["reduce_dtype"], "reduce_dtype"),
        output_dtype=parse_dtype(options["output_dtype"], "output_dtype"),
        cast_forward_inputs=options["cast_forward_inputs"],
    )
    # Pinning needs an accelerator; on a CPU-only run the offload target is already the CPU.
    pin = options["pin_memory"] and device.type != "cpu"
    offload = CPUOffloadPolicy(pin_memory=pin) if options["offload_to_cpu"] else OffloadPolicy()
    reshard = options["reshard_after_forward"]
    return {"mp_policy": mp_policy, "offload_policy": offload, "reshard_after_forward": reshard}


def _ignored_modules(model: torch.nn.Module, patterns: Sequence[str], wrapped: list[str]) -> list[torch.nn.Module]:
    """The ignored modules, which must be frozen and must not contain a wrapped module."""
    found = []
    for name, module in expand(patterns, model, "parallel.fsdp2.ignored_modules"):
        inside = [w for w in wrapped if w == name or w.startswith(name + ".")]
        if inside:
            raise ConfigError(
                f"parallel.fsdp2: {inside[0]!r} is in sub_modules_to_wrap but inside ignored module {name!r}"
            )
        if any(p.requires_grad for p in module.parameters()):
            raise ConfigError(
                f"parallel.fsdp2.ignored_modules: {name!r} has trainable parameters, whose gradients FSDP2 "
                "would not average across ranks; freeze it (requires_grad=False) or let FSDP2 shard it"
            )
        found.append(module)
    return found


def resolve(
    model: torch.nn.Module, options: Mapping[str, Any], default_modules: Sequence[str] = (),
    ignored: Sequence[str] = (),
) -> tuple[list[tuple[str, torch.nn.Module]], list[torch.nn.Module]]:
    """The modules to wrap (sub_modules_to_wrap, else the plugin's ``default_modules``) and the ignored ones
    (ignored_modules and the plugin's ``ignored``)."""
    patterns = options["sub_modules_to_wrap"] or list(default_modules)
    wrapped = expand(patterns, model, "parallel.fsdp2.sub_modules_to_wrap") if patterns else []
    ignored_patterns = list(dict.fromkeys([*options["ignored_modules"], *ignored]))
    return wrapped, _ignored_modules(model, ignored_patterns, [n for n, _ in wrapped])


def _set_prefetch(units: list[FSDPModule], forward: int, backward: int) -> None:
    """Explicit prefetch: each unit gathers the next ``forward`` (in backward: previous ``backward``) units early."""
    for i, unit in enumerate(units):
        if forward and units[i + 1 : i + 1 + forward]:
            unit.set_modules_to_forward_prefetch(units[i + 1 : i + 1 + forward])
        if backward and units[max(i - backward, 0) : i]:
            unit.set_modules_to_backward_prefetch(units[max(i - backward, 0) : i][::-1])


def apply_fsdp2(
    model: torch.nn.Module,
    mesh: DeviceMesh,
    options: Mapping[str, Any],
    default_modules: Sequence[str] = (),
    ignored: Sequence[str] = (),
) -> torch.nn.Module:
    """fully_shard each module matched by sub_modules_to_wrap (else ``default_modules``), then the root; the
    ignored_modules and ``ignored`` stay whole.

    A model with a ``fully_shard(mesh, fsdp_kwargs, config)`` method shards itself instead
    (the seeds' custom ``_fully_shard``); the root is sharded afterwards if the method did not.
    """
    device = torch.device(mesh.device_type)
    kwargs = fsdp_kwargs(options, device)
    wrapped, ignored_modules = resolve(model, options, default_modules, ignored)
    if ignored_modules:
        kwargs["ignored_params"] = {p for module in ignored_modules for p in module.parameters()}
    if callable(getattr(model, "fully_shard", None)):
        model.fully_shard(mesh, dict(kwargs), options)
    else:
        if not wrapped:
            log.warning("parallel.fsdp2: no sub_modules_to_wrap and no plan from the plugin; one unit for the model")
        # Children before parents: fully_shard of a parent must see its sharded children.
        for _, module in reversed(wrapped):
            fully_shard(module, mesh=mesh, **kwargs)
        _set_prefetch([m for _, m in wrapped], options["num_to_forward_prefetch"], options["num_to_backward_prefetch"])
    if not isinstance(model, FSDPModule):
        # torch's default (None) keeps the root unsharded after forward: backward needs it right away.
        fully_shard(model, mesh=mesh, **{**kwargs, "reshard_after_forward": None})
    # FSDP2 leaves what it ignores as it is; these frozen modules still get inputs cast to param_dtype.
    for module in ignored_modules:
        on_meta = any(t.is_meta for t in (*module.parameters(), *module.buffers()))
        module.to(device=None if on_meta else device, dtype=kwargs["mp_policy"].param_dtype)
    return model
