"""LoRA weights in MindSpeed-MM's names (``<module>.lora_A.default.weight``, ``lora_B``): converted from the names
of Hugging Face / diffusers / DiffSynth LoRA files, split for tensor parallelism, and merged into base weights.

A LoRA pair of a linear ``W`` (out x in) is ``A`` (rank x in) and ``B`` (out x rank); the merged weight is
``W + scaling * B @ A`` with ``scaling = lora_alpha / lora_rank``. Renaming a module renames its pair; a rule that
reorders ``W``'s rows (fused q/k/v laid out per head) reorders ``B``'s rows alike and leaves ``A``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch

from mm_convert.errors import ConvertError
from mm_convert.rules import Rule, RuleSet
from mm_convert.sources import TensorSource, listing
from mm_convert.tp_split import Split, SplitRule

LORA_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<part>[AB])(?:\.(?P<adapter>[^.]+))?\.weight$")
ADAPTER = "default"
# Wrappers around the model in LoRA files: peft, ComfyUI / Wan-AI, diffusers pipelines, DiffSynth, MindSpeed-MM.
WRAPPER_PREFIXES = ("base_model.model.", "diffusion_model.", "transformer.", "pipe.dit.", "model.", "predictor.")


def lora_name(module: str, part: str) -> str:
    """MindSpeed-MM's name of ``module``'s LoRA ``part`` (A or B)."""
    return f"{module}.lora_{part}.{ADAPTER}.weight"


def lora_pairs(source: TensorSource, others: str = "error") -> dict[str, tuple[str, str]]:
    """Module -> (A key, B key) of every LoRA pair in ``source``; keys that are not LoRA weights are an error, or
    skipped with ``others="skip"`` (a training checkpoint's base weights)."""
    parts: dict[str, dict[str, str]] = {}
    stray = []
    for key in source:
        found = LORA_KEY.match(key)
        if found is None:
            stray.append(key)
        else:
            parts.setdefault(found.group("module"), {})[found.group("part")] = key
    if stray and others == "error":
        raise ConvertError(f"{source.where}: {len(stray)} keys are not LoRA weights (<module>.lora_A/lora_B[.adapter]"
                           f".weight): {listing(sorted(stray))}")
    alone = sorted(f"{m} (only lora_{next(iter(p))})" for m, p in parts.items() if len(p) != 2)
    if alone:
        raise ConvertError(f"{source.where}: LoRA weights without their other half: {listing(alone)}")
    if not parts:
        raise ConvertError(f"{source.where} holds no LoRA weights (<module>.lora_A.weight / lora_B.weight)")
    return {module: (p["A"], p["B"]) for module, p in parts.items()}


def _find(module: str, rule_sets: Sequence[RuleSet]) -> tuple[Rule, str] | None:
    names = [module, *(module[len(p):] for p in WRAPPER_PREFIXES if module.startswith(p))]
    for name in names:
        for rules in rule_sets:
            found = rules.find_hf(f"{name}.weight")
            if found is not None:
                return found[0], found[1].removesuffix(".weight")
    return None


def convert_lora(source: TensorSource, rule_sets: Sequence[RuleSet]) -> TensorSource:
    """LoRA ``source`` named as the ``hf`` side of any of ``rule_sets`` (wrapper prefixes dropped), under
    MindSpeed-MM's names of the other side; loaded on access."""
    plan: dict[str, tuple[str, Rule | None]] = {}
    unknown, fused = [], []
    for module, (a, b) in lora_pairs(source).items():
        found = _find(module, rule_sets)
        if found is None:
            unknown.append(module)
            continue
        rule, target = found
        if len(rule.hf) > 1:
            fused.append(f"{module} (fused into {target} with {len(rule.hf) - 1} other tensors)")
            continue
        plan[lora_name(target, "A")] = (a, None)
        plan[lora_name(target, "B")] = (b, rule)
    if unknown:
        raise ConvertError(f"{source.where}: {len(unknown)} LoRA modules have no known name mapping: "
                           f"{listing(sorted(unknown))}")
    if fused:
        raise ConvertError(f"{source.where}: a LoRA of a tensor that MindSpeed-MM fuses with others has no LoRA "
                           f"there: {listing(sorted(fused))}")

    def read(name: str, tensor: torch.Tensor) -> torch.Tensor:
        rule = plan[name][1]
        return tensor if rule is None else rule.join([tensor])

    metas = {name: read(name, source.meta(key)) for name, (key, _) in plan.items()}
    return TensorSource(metas, lambda name: read(name, source[plan[name][0]]), source.where)


def lora_split_rule(weight_rule: SplitRule) -> SplitRule:
    """The tensor-parallel split of LoRA weights, from that of their linears: B splits as a column-parallel weight
    (its rows), A as a row-parallel one (its columns); other keys as ``weight_rule`` says."""

    def rule(key: str) -> Split | None:
        found = LORA_KEY.match(key)
        if found is None:
            return weight_rule(key)
        split = weight_rule(f"{found.group('module')}.weight")
        if found.group("part") == "B":
            return split if split is not None and split[0] == 0 else None
        return (1, 1) if split is not None and split[0] == 1 else None

    return rule


def merge_lora(base: TensorSource, lora: TensorSource, scaling: float) -> TensorSource:
    """``base`` with each linear that ``lora`` holds a pair for replaced by ``W + scaling * B @ A`` (in float32,
    back to ``W``'s dtype); loaded on access."""
    pairs = lora_pairs(lora, others="skip")
    merged: dict[str, tuple[str, str]] = {}
    problems = []
    for module, (a, b) in pairs.items():
        key = f"{module}.weight"
        if key not in base:
            problems.append(f"{module} (no {key} in {base.where})")
            continue
        weight, down, up = base.meta(key).shape, lora.meta(a).shape, lora.meta(b).shape
        if len(weight) != 2 or (up[0], down[1]) != tuple(weight) or up[1] != down[0]:
            problems.append(f"{module}: B {tuple(up)} @ A {tuple(down)} does not fit W {tuple(weight)}")
            continue
        merged[key] = (a, b)
    if problems:
        raise ConvertError(f"{lora.where}: {len(problems)} LoRA pairs cannot be merged: {listing(sorted(problems))}")

    def load(key: str) -> torch.Tensor:
        weight = base[key]
        if key not in merged:
            return weight
        a, b = merged[key]
        return (weight.float() + scaling * (lora[b].float() @ lora[a].float())).to(weight.dtype)

    return TensorSource(base.metas, load, base.where)
