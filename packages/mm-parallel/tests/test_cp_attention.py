"""Context-parallel attention (Ulysses, ring, USP) equals SDPA on the whole sequence, outputs and gradients; so does
a model the engine splits and gathers from its ContextParallelPlan, with and without activation checkpointing."""

from __future__ import annotations

import json

import cp_workers
import pytest
import torch
import torch.nn.functional as F
from distributed import launch

from mm_parallel import attention
from mm_parallel.context import SequenceLayout

TOLERANCE = 1e-5


@pytest.fixture(scope="module", params=[2, 4])
def report(request, tmp_path_factory) -> dict:
    """All cases of one world size, run in one spawn."""
    out = tmp_path_factory.mktemp(f"cp{request.param}") / "report.json"
    launch(request.param, cp_workers.check, str(out))
    return {"world": request.param, **json.loads(out.read_text())}


def test_every_mode_matches_single_device_attention(report):
    modes = {name.split("-")[0] for name in report["errors"]}
    expected = {"ulysses", "ring", "double"} | ({"usp", "uspdouble", "pairs"} if report["world"] == 4 else set())
    assert modes == expected
    bad = {
        case: errors for case, errors in report["errors"].items() if not all(e <= TOLERANCE for e in errors.values())
    }
    assert not bad


def test_the_plan_split_and_gather_equal_one_rank(report):
    cases = report["engine"]
    # Two modes × a length that divides evenly and one that pads × no, full and selective recompute.
    assert len(cases) == 12
    bad = {case: errors for case, errors in cases.items() if not (errors["out"] <= TOLERANCE >= errors["grad"])}
    assert not bad
    assert not any(errors["open"] for errors in cases.values())


def test_ulysses_with_indivisible_heads_is_a_config_error(report):
    world = report["world"]
    assert f"{world + 1} attention heads over {world} ranks" in report["messages"]["ulysses"]
    if world == 4:
        assert "3 attention heads over 2 ranks" in report["messages"]["usp"]


def test_a_double_ring_window_must_divide_the_ring(report):
    assert report["messages"]["window"] == f"parallel.cp.window_size 3 must divide the ring's {report['world']} ranks"


@pytest.mark.parametrize("layout", ["bshd", "bhsd"])
def test_without_a_group_attention_is_sdpa(layout):
    q, k, v = torch.randn(3, 2, 5, 4, 8).unbind(0)
    expected = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.3)
    args = (t.transpose(1, 2) for t in (q, k, v)) if layout == "bshd" else (q, k, v)
    out = attention(*args, causal=True, scale=0.3, layout=layout)
    assert torch.equal(out.transpose(1, 2) if layout == "bshd" else out, expected)


def test_zigzag_layout_pads_and_balances_causal_work():
    layout = SequenceLayout(13, ring=2, ulysses=2)
    assert (layout.padded, layout.chunk_len) == (16, 4)
    # Ring rank 0 holds chunks 0 and 3, ring rank 1 chunks 1 and 2; each ring shard splits over two ulysses ranks.
    assert [layout.positions(rank).tolist() for rank in range(4)] == [
        [0, 1, 2, 3],
        [12, 13, 14, 15],
        [4, 5, 6, 7],
        [8, 9, 10, 11],
    ]
    assert sorted(layout.order.tolist()) == list(range(16))
