"""Name rules, MindSpeed-MM pipeline layouts and safetensors folders on a toy model: round trips and errors."""

from __future__ import annotations

import pytest
import torch

from mm_convert import (
    ConvertError,
    PipelineSpec,
    RuleSet,
    Stack,
    TensorSource,
    concat,
    deinterleave,
    interleave,
    parse_layout,
    read_megatron,
    read_safetensors,
    rename,
    resplit_megatron,
    staged_output,
    write_megatron,
    write_safetensors,
)

# A toy model: an embedding, 4 blocks and a head, the head tied to the embedding.
SPEC = PipelineSpec((Stack("dit", "blocks.", firsts=("embed.",), lasts=("head.",)),),
                    tied={"head.weight": "embed.weight"})


def _tensors(layers: int = 4) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    out = {"embed.weight": torch.randn(8, 4)}
    for i in range(layers):
        out[f"blocks.{i}.proj.weight"] = torch.randn(4, 4)
        out[f"blocks.{i}.proj.bias"] = torch.randn(4).to(torch.bfloat16)
    return out


def _source(tensors: dict[str, torch.Tensor]) -> TensorSource:
    return TensorSource({k: v.to("meta") for k, v in tensors.items()}, tensors.__getitem__, "toy")


def _assert_same(source: TensorSource, tensors: dict[str, torch.Tensor]) -> None:
    assert sorted(source) == sorted(tensors)
    for key, value in tensors.items():
        assert source[key].dtype == value.dtype and torch.equal(source[key], value), key


def _stage_keys(root, name: str, chunk: str = "model") -> list[str]:
    return sorted(torch.load(root / "release" / name / "model_optim_rng.pt", weights_only=False)[chunk])


def test_resplit_round_trips_between_layouts(tmp_path):
    tensors = _tensors()
    write_megatron(tmp_path / "a", [_source(tensors)], {"dit": [[4]]}, SPEC)
    assert _stage_keys(tmp_path / "a", "mp_rank_00") == sorted(k for k in tensors)  # one stage: no tied copy
    path = tmp_path / "a"
    for n, layout in enumerate([[[2, 2]], [[1, 3]], [[1, 1], [1, 1]], [[4]]]):
        assert resplit_megatron(path, tmp_path / f"r{n}", {"dit": layout}, SPEC)["dit"] != layout
        path = tmp_path / f"r{n}"
        checkpoint = read_megatron(path, SPEC)
        assert checkpoint.layouts == {"dit": layout}
        _assert_same(checkpoint.sources[0], tensors)
    last = read_megatron(tmp_path / "r1", SPEC)
    assert last.layouts == {"dit": [[1, 3]]}
    first, second = _stage_keys(tmp_path / "r1", "mp_rank_00_000"), _stage_keys(tmp_path / "r1", "mp_rank_00_001")
    assert first == ["blocks.0.proj.bias", "blocks.0.proj.weight", "embed.weight"]
    assert second[-1] == "head.weight" and "blocks.2.proj.weight" in second and "blocks.3.proj.weight" not in second
    assert (tmp_path / "r1" / "latest_checkpointed_iteration.txt").read_text() == "release"
    assert _stage_keys(tmp_path / "r2", "mp_rank_00_001", "model1")[-1] == "head.weight"


def test_layout_that_does_not_fit_is_one_error_and_writes_nothing(tmp_path):
    write_megatron(tmp_path / "a", [_source(_tensors())], {"dit": [[2, 2]]}, SPEC)
    with pytest.raises(ConvertError, match=r"the dit layout \[\[2, 3\]\] holds 5 layers but .* has 4"):
        resplit_megatron(tmp_path / "a", tmp_path / "b", {"dit": [[2, 3]]}, SPEC)
    assert not (tmp_path / "b").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["a"]
    with pytest.raises(ConvertError, match="1 keys belong to no layer stack: stray.weight"):
        write_megatron(tmp_path / "c", [_source({**_tensors(), "stray.weight": torch.ones(1)})], {"dit": [[4]]}, SPEC)


@pytest.mark.parametrize(("value", "expected"), [(4, [[4]]), ([2, 2], [[2, 2]]), ([[1, 1], [1, 1]], [[1, 1], [1, 1]])])
def test_layouts_of_the_seeds(value, expected):
    assert parse_layout(value, "--cfg.pp") == expected


def test_bad_layout_names_the_option():
    with pytest.raises(ConvertError, match=r"--cfg.pp must be layers per stage .* got \[\[1, 2\], \[3\]\]"):
        parse_layout([[1, 2], [3]], "--cfg.pp")


def test_interleave_is_megatrons_grouped_qkv():
    q, k, v = torch.arange(8.0), torch.arange(8.0, 12.0), torch.arange(12.0, 16.0)
    fused = interleave([q, k, v], 2)
    assert fused.tolist() == [0, 1, 2, 3, 8, 9, 12, 13, 4, 5, 6, 7, 10, 11, 14, 15]
    assert [t.tolist() for t in deinterleave(fused, 2, [8, 4, 4])] == [q.tolist(), k.tolist(), v.tolist()]


def test_rules_round_trip_and_name_unknown_or_incomplete_keys():
    rules = RuleSet([concat(("l.{i}.gate", "l.{i}.up"), "m.{i}.fc1"), rename("emb", "embedding")])
    tensors = {"l.0.gate.weight": torch.randn(2, 3), "l.0.up.weight": torch.randn(2, 3), "emb.weight": torch.randn(5)}
    mm = rules.to_mm(_source(tensors))
    assert sorted(mm) == ["embedding.weight", "m.0.fc1.weight"] and mm.meta("m.0.fc1.weight").shape == (4, 3)
    _assert_same(rules.to_hf(mm), tensors)
    with pytest.raises(ConvertError, match="1 keys have no known name mapping: other.weight"):
        rules.to_mm(_source({**tensors, "other.weight": torch.ones(1)}))
    with pytest.raises(ConvertError, match="m.0.fc1.weight lacks a part next to l.0.gate.weight"):
        rules.to_mm(_source({"l.0.gate.weight": torch.ones(1)}))


def test_safetensors_shards_and_shape_check(tmp_path):
    tensors = _tensors()
    files = write_safetensors(tmp_path / "w", _source(tensors), "model", shard_size=200)
    assert len(files) > 1 and (tmp_path / "w" / "model.safetensors.index.json").is_file()
    source = read_safetensors(tmp_path / "w")
    _assert_same(source, tensors)
    expected = {k: v.shape for k, v in tensors.items() if k != "blocks.3.proj.bias"}
    expected["embed.weight"] = torch.Size([9, 4])
    expected["blocks.9.proj.weight"] = torch.Size([4, 4])
    with pytest.raises(ConvertError) as info:
        source.check(expected, "the toy config")
    assert str(info.value).endswith(
        "does not match the toy config: 1 missing keys: blocks.9.proj.weight; 1 unexpected keys: blocks.3.proj.bias; "
        "1 shape mismatches: embed.weight (8, 4) != (9, 4)")


def test_failed_output_leaves_the_target_as_it_was(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(RuntimeError), staged_output(tmp_path / "out") as out:
        (out / "half.bin").write_text("partial")
        raise RuntimeError("interrupted")
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["keep.txt"]
