"""MindSpeed-MM LoRA weights back to Hugging Face names, written as a peft adapter folder.

The reverse of :func:`mm_convert.lora_weights.convert_lora`: each pair's module is renamed by the rule that names its
weight (B's rows put back in Hugging Face's order where the rule reorders the weight's rows, A as it is), and the
pairs are written as ``adapter_model.safetensors`` with the ``adapter_config.json`` peft needs to load them.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import torch
from safetensors.torch import save_file

from mm_convert.errors import ConvertError
from mm_convert.lora_weights import lora_pairs
from mm_convert.publish import staged_output
from mm_convert.rules import RuleSet
from mm_convert.sources import TensorSource, listing

ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json")


def lora_to_hf(source: TensorSource, rules: RuleSet) -> TensorSource:
    """LoRA ``source`` in MindSpeed-MM's names (``<module>.lora_A.default.weight``) under the ``hf`` names of
    ``rules`` (``<hf module>.lora_A.weight``, ``lora_B``); loaded on access."""
    metas: dict[str, torch.Tensor] = {}
    loads: dict[str, tuple[TensorSource, str]] = {}
    fused = []
    for module, (a, b) in lora_pairs(source).items():
        weight = f"{module}.weight"
        up = rules.to_hf(TensorSource({weight: source.meta(b)}, lambda _, b=b: source[b], source.where))
        if len(up) != 1:
            fused.append(f"{module} (the fused weight of {len(up)} Hugging Face tensors)")
            continue
        hf_weight = next(iter(up))
        for part, holder, name in (("A", source, a), ("B", up, hf_weight)):
            key = f"{hf_weight.removesuffix('.weight')}.lora_{part}.weight"
            metas[key], loads[key] = holder.meta(name), (holder, name)
    if fused:
        raise ConvertError(f"{source.where}: a LoRA of a fused weight has no Hugging Face LoRA: {listing(fused)}")
    return TensorSource(metas, lambda key: loads[key][0][loads[key][1]], source.where)


def write_peft_adapter(target: str | Path, weights: TensorSource, prefix: str, lora_alpha: int | None,
                       base_model: str | None) -> str:
    """Write ``weights`` (``<prefix><module>.lora_A.weight`` / ``lora_B``) to ``target`` as peft's
    ``adapter_model.safetensors`` and ``adapter_config.json`` (``r`` from the shapes, the adapted modules as
    ``target_modules``, ``lora_alpha`` or, without it, the rank); returns a summary of what it wrote."""
    from peft import LoraConfig

    pairs = lora_pairs(weights)
    ranks = {module.removeprefix(prefix): weights.meta(a).shape[0] for module, (a, _) in pairs.items()}
    rank = Counter(ranks.values()).most_common(1)[0][0]
    alpha = rank if lora_alpha is None else lora_alpha
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=sorted(ranks), bias="none",
                        rank_pattern={m: r for m, r in ranks.items() if r != rank},
                        base_model_name_or_path=base_model)
    with staged_output(target, stale=ADAPTER_FILES) as out:
        tensors = {key: weights[key].clone(memory_format=torch.contiguous_format) for key in weights}
        save_file(tensors, str(out / ADAPTER_FILES[0]), metadata={"format": "pt"})
        config.save_pretrained(str(out))
    given = "" if lora_alpha is not None else " (the rank: no lora_alpha given)"
    return f"{len(pairs)} LoRA pairs, r {rank}, lora_alpha {alpha}{given}"
