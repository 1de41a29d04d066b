"""Data-parallel wan2_1 training (DDP, FSDP2) equals one process: per-sample noise does not depend on the layout."""

from __future__ import annotations

import pytest
import torch
from parallel_testing import parallel_run

from mm_models_video.flow_matching import FlowMatching, noise_seeds


def test_noise_and_timestep_of_a_sample_do_not_depend_on_its_batch() -> None:
    fm = FlowMatching()
    latents = torch.zeros(3, 4, 3, 4, 4)
    seeds = noise_seeds(1234, torch.tensor([2, 2, 2]), torch.tensor([7, 0, 5]))
    assert seeds == [(1234 * 1_000_003 + 2) * 1_000_003 + index for index in (7, 0, 5)]
    noise, indices = fm.draw(latents, seeds)
    alone = [fm.draw(latents[i : i + 1], seeds[i : i + 1]) for i in range(3)]
    torch.testing.assert_close(noise, torch.cat([n for n, _ in alone]), rtol=0, atol=0)
    assert indices.tolist() == [int(i) for _, i in alone]
    other_epoch, _ = fm.draw(latents, noise_seeds(1234, [3, 3, 3], [7, 0, 5]))
    assert not torch.equal(noise[0], noise[1]) and not torch.equal(noise, other_epoch)


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> dict:
    return parallel_run(1, tmp_path_factory.mktemp("one"))


@pytest.mark.parametrize(
    ("world", "overrides"),
    [
        (2, []),
        (2, ["parallel.fsdp2.enable=true"]),
        pytest.param(4, ["parallel.fsdp2.enable=true"], marks=pytest.mark.slow),
    ],
    ids=["ddp-2", "fsdp2-2", "fsdp2-4"],
)
def test_data_parallel_training_equals_one_process(single, tmp_path, world, overrides) -> None:
    run = parallel_run(world, tmp_path, *overrides)
    assert run["loss"] == pytest.approx(single["loss"], rel=1e-5)
    assert run["grad_norm"] == pytest.approx(single["grad_norm"], rel=1e-5)
