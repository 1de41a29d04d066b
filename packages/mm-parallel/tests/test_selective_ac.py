"""Selective recompute keeps attention outputs and gives the gradients of full recompute and of no recompute."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention.varlen import varlen_attn

from mm_core.errors import ConfigError
from mm_core.testing import needs_cuda, run_training, toy
from mm_parallel.fsdp2 import FSDP2_DEFAULTS
from mm_parallel.recompute import CountAttention, apply_recompute


class AttentionBlock(torch.nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = torch.nn.LayerNorm(dim)
        self.qkv = torch.nn.Linear(dim, 3 * dim)
        self.out = torch.nn.Linear(dim, dim)
        self.norm2 = torch.nn.LayerNorm(dim)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(dim, 4 * dim), torch.nn.GELU(), torch.nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        attn = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d)
        x = x + self.out(attn)
        return x + self.mlp(self.norm2(x))


class Net(torch.nn.Module):
    def __init__(self, dim: int = 32, heads: int = 4, depth: int = 3) -> None:
        super().__init__()
        self.blocks = torch.nn.ModuleList(AttentionBlock(dim, heads) for _ in range(depth))
        self.head = torch.nn.Linear(dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def _train_step(mode: str | None) -> tuple[torch.Tensor, dict[str, torch.Tensor], int]:
    torch.manual_seed(0)
    model = Net()
    if mode is not None:
        apply_recompute(model, ["blocks.{*}"], mode=mode)
    x = torch.randn(2, 16, 32, requires_grad=True)
    with CountAttention() as counter:
        loss = model(x).square().mean()
        loss.backward()
    grads = {name.replace("_checkpoint_wrapped_module.", ""): p.grad for name, p in model.named_parameters()}
    return loss.detach(), {**grads, "input": x.grad}, counter.calls


def test_selective_recompute_gives_the_gradients_of_no_recompute():
    plain_loss, plain_grads, _ = _train_step(None)
    for mode in ("full", "selective"):
        loss, grads, _ = _train_step(mode)
        torch.testing.assert_close(loss, plain_loss, rtol=0, atol=0)
        assert grads.keys() == plain_grads.keys()
        for name, grad in plain_grads.items():
            torch.testing.assert_close(grads[name], grad, rtol=1e-6, atol=1e-7, msg=f"{mode}: {name}")


def test_selective_recompute_runs_attention_once_per_block():
    depth = len(Net().blocks)
    assert _train_step(None)[2] == depth
    assert _train_step("full")[2] == 2 * depth
    assert _train_step("selective")[2] == depth


def test_unknown_mode_is_one_clear_error():
    with pytest.raises(ConfigError, match="recompute_mode must be one of full, selective, got 'some'"):
        apply_recompute(Net(), ["blocks.{*}"], mode="some")


def test_selective_is_the_default_mode_and_trains_like_no_recompute(tmp_path):
    assert FSDP2_DEFAULTS["recompute_mode"] == "selective"
    plain = run_training([toy], tmp_path / "plain").losses
    selective = run_training([toy], tmp_path / "selective", ["parallel.fsdp2.recompute_modules=['blocks.{*}']"])
    assert selective.losses == pytest.approx(plain, rel=1e-6)


def test_a_wrong_mode_in_the_config_names_the_key(tmp_path):
    overrides = ["parallel.fsdp2.recompute_modules=['blocks.{*}']", "parallel.fsdp2.recompute_mode=partial"]
    with pytest.raises(ConfigError, match="parallel.fsdp2.recompute_mode must be one of full, selective"):
        run_training([toy], tmp_path, overrides)


class VarlenBlock(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.qkv = torch.nn.Linear(16, 48)

    def forward(self, x: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).view(-1, 3, 2, 8).unbind(1)
        return x + varlen_attn(q, k, v, cu_seqlens, cu_seqlens, 5, 5).reshape(-1, 16)


def _varlen_step(mode: str | None, device: str) -> tuple[int, torch.Tensor]:
    """Attention runs and the input's gradient of three varlen blocks under ``mode``."""
    torch.manual_seed(0)
    with torch.device(device):
        blocks = torch.nn.ModuleList(VarlenBlock() for _ in range(3)).to(torch.bfloat16)
        x = torch.randn(9, 16, dtype=torch.bfloat16, requires_grad=True)
        cu_seqlens = torch.tensor([0, 4, 9], dtype=torch.int32)
    model = torch.nn.Module()
    model.blocks = blocks
    if mode is not None:
        apply_recompute(model, ["blocks.{*}"], mode=mode)
    with CountAttention() as counter:
        h = x
        for block in model.blocks:
            h = block(h, cu_seqlens)
        h.sum().backward()
    return counter.calls, x.grad


@pytest.mark.parametrize("mode, runs_per_block", [(None, 1), ("full", 2), ("selective", 1)])
def test_selective_recompute_keeps_varlen_attention(mode, runs_per_block):
    # varlen_attn has CUDA kernels only; on the meta device its shape rules run, and the policy sees the op.
    assert _varlen_step(mode, "meta")[0] == runs_per_block * 3


@needs_cuda
def test_selective_recompute_keeps_varlen_attention_on_cuda():
    plain_calls, plain_grad = _varlen_step(None, "cuda")
    selective_calls, selective_grad = _varlen_step("selective", "cuda")
    assert plain_calls == selective_calls == 3
    torch.testing.assert_close(selective_grad, plain_grad, rtol=1e-2, atol=1e-2)


def test_megatron_recompute_flags_wrap_the_first_layers_of_the_plan_and_leave_the_losses(tmp_path):
    from mm_core.config import wrap
    from mm_parallel.recompute import recompute_settings

    config = wrap(toy.default_config("run"))
    plan = toy.parallel_plan(toy.build(config.model), config)
    fsdp = {"recompute_modules": [], "recompute_mode": "selective"}
    block = wrap({"fsdp2": fsdp, "recompute": {"granularity": "full", "method": "block", "num_layers": 2}})
    assert recompute_settings(block, plan) == (("blocks.{0-1}",), "full")
    uniform = wrap({"fsdp2": fsdp, "recompute": {"granularity": "full", "method": "uniform", "num_layers": 1}})
    assert recompute_settings(uniform, plan) == (("blocks.{*}",), "full")
    both = wrap({"fsdp2": {**fsdp, "recompute_modules": ["blocks.0"]}, "recompute": block.recompute})
    with pytest.raises(ConfigError, match="both set; give one"):
        recompute_settings(both, plan)
    plain = run_training([toy], tmp_path / "plain", ["training.train_iters=3"])
    megatron = ["parallel.recompute.granularity=full", "parallel.recompute.method=block",
                "parallel.recompute.num_layers=2"]
    flagged = run_training([toy], tmp_path / "flagged", ["training.train_iters=3", *megatron])
    assert flagged.losses == plain.losses
