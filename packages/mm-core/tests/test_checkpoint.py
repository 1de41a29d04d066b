"""Checkpoints: bitwise resume, atomic writes, pruning, clear errors."""

from __future__ import annotations

import errno
import logging
import re
import shutil
from pathlib import Path

import pytest
import torch

from mm_core.checkpoint import latest_checkpoint, list_checkpoints, load_model_state
from mm_core.errors import CheckpointError
from mm_core.testing import toy

# With dropout, a bitwise resume also needs the random state back.
DROPOUT = "model.dropout=0.1"


def test_ten_steps_equal_five_plus_resume_plus_five_bitwise(mm_train, tmp_path):
    straight = mm_train([toy], DROPOUT, "training.train_iters=10", output_dir=tmp_path / "straight")
    run = tmp_path / "resumed"
    first = mm_train([toy], DROPOUT, "training.train_iters=5", "training.lr_decay_iters=10", output_dir=run)
    second = mm_train([toy], DROPOUT, "training.train_iters=10", "training.resume=true", output_dir=run)
    assert sorted(first.losses) == [1, 2, 3, 4, 5]
    assert sorted(second.losses) == [6, 7, 8, 9, 10]
    resumed = {**first.losses, **second.losses}
    assert resumed == straight.losses  # exact float equality: bitwise on the CPU

    def weights(path):
        model = toy.ToyModel(dim=8, depth=4)
        load_model_state(path, model)
        return model.state_dict()

    a, b = weights(straight.checkpoint), weights(second.checkpoint)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_crosses_an_epoch_boundary(mm_train, tmp_path):
    # 64 samples / global batch 8 = 8 steps per epoch: resume at 6 and run into epoch 2.
    straight = mm_train([toy], DROPOUT, "training.train_iters=12", output_dir=tmp_path / "a")
    mm_train([toy], DROPOUT, "training.train_iters=6", "training.lr_decay_iters=12",
             "training.save_interval=6", output_dir=tmp_path / "b")
    resumed = mm_train([toy], DROPOUT, "training.train_iters=12", "training.resume=true", output_dir=tmp_path / "b")
    assert all(resumed.losses[s] == straight.losses[s] for s in range(7, 13))


def test_keep_last_prunes_old_checkpoints(mm_train):
    result = mm_train([toy], "training.train_iters=10", "training.save_interval=2", "training.keep_last=2")
    steps = [s for s, _ in list_checkpoints(result.output_dir / "checkpoints")]
    assert steps == [8, 10]


def _no_tmp_left(root) -> bool:
    return not [p for p in root.iterdir() if p.name.startswith(".tmp")]


def test_a_full_disk_mid_save_is_one_error_and_keeps_the_last_good_checkpoint(mm_train, monkeypatch):
    import mm_core.checkpoint as ckpt

    result = mm_train([toy], "training.train_iters=5")
    root = result.output_dir / "checkpoints"
    good = latest_checkpoint(root)
    assert good.name == "step_00000005"

    def full_disk(state, checkpoint_id, **kwargs):
        (Path(checkpoint_id) / "__0_0.distcp").write_bytes(b"half a shard")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt.dcp, "save", full_disk)
    with pytest.raises(CheckpointError) as info:
        mm_train([toy], "training.train_iters=10", "training.resume=true", output_dir=result.output_dir)
    assert re.fullmatch(
        rf"no space left on the device of {root} for checkpoint step 6: it needs about [0-9.]+ KiB, .+ were "
        rf"free; free some space or set training.output_dir elsewhere \(the previous checkpoint {good} is intact\)",
        str(info.value),
    )
    assert _no_tmp_left(root) and latest_checkpoint(root) == good
    monkeypatch.undo()
    resumed = mm_train([toy], "training.train_iters=10", "training.resume=true", output_dir=result.output_dir)
    assert min(resumed.losses) == 6
    assert latest_checkpoint(root).name == "step_00000010"


def test_too_little_free_space_is_found_before_writing(mm_train, monkeypatch):
    import mm_core.checkpoint as ckpt

    monkeypatch.setattr(ckpt.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9 - 100, 100))
    with pytest.raises(CheckpointError, match=r"it needs about [0-9.]+ KiB, 100 bytes were free; .* \(no "
                                              r"earlier checkpoint exists\)$") as info:
        mm_train([toy], "training.train_iters=1", "training.save_interval=1")
    assert "for checkpoint step 1" in str(info.value)
    assert _no_tmp_left(Path(str(info.value).split("device of ")[1].split(" for ")[0]))


@pytest.mark.parametrize("damage", ["truncate", "flip a byte"])
def test_a_damaged_newest_checkpoint_is_named_and_the_one_before_it_resumes(mm_train, tmp_path, caplog, damage):
    straight = mm_train([toy], DROPOUT, "training.train_iters=9", output_dir=tmp_path / "straight")
    run = mm_train([toy], DROPOUT, "training.train_iters=6", "training.lr_decay_iters=9", output_dir=tmp_path / "run")
    shard = run.output_dir / "checkpoints" / "step_00000006" / "__0_0.distcp"
    data = bytearray(shard.read_bytes())
    if damage == "truncate":
        shard.write_bytes(data[: len(data) // 2])
        problem = f"{shard} has {len(data) // 2} bytes, {len(data)} were written"
    else:
        data[len(data) // 2] ^= 0xFF
        shard.write_bytes(data)
        problem = f"{shard} does not have the checksum it was written with"
    with caplog.at_level(logging.INFO, logger="mm"):
        resumed = mm_train([toy], DROPOUT, "training.train_iters=9", "training.resume=true", output_dir=run.output_dir)
    assert f"checkpoint {shard.parent} is damaged ({problem}): trying the one before it" in caplog.messages
    assert sorted(resumed.losses) == [4, 5, 6, 7, 8, 9]
    assert all(resumed.losses[s] == straight.losses[s] for s in resumed.losses)


def test_when_every_checkpoint_is_damaged_resume_is_one_error(mm_train):
    run = mm_train([toy], "training.train_iters=3")
    (run.checkpoint / "trainer_state.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"every checkpoint in .*checkpoints is damaged \(see the warnings "
                                              r"above\): nothing to resume from; move them away to start from step 0"):
        mm_train([toy], "training.train_iters=6", "training.resume=true", output_dir=run.output_dir)


def test_resume_without_checkpoint_starts_fresh(mm_train):
    result = mm_train([toy], "training.train_iters=2", "training.resume=true")
    assert sorted(result.losses) == [1, 2]


def test_loading_into_a_different_model_is_a_clear_error(mm_train):
    result = mm_train([toy], "training.train_iters=1", "training.save_interval=1")
    with pytest.raises(CheckpointError, match="does not match the model"):
        load_model_state(result.checkpoint, toy.ToyModel(dim=16, depth=4))


def test_a_directory_without_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="no torch.distributed.checkpoint"):
        load_model_state(tmp_path, toy.ToyModel(dim=8, depth=4))


def test_checkpoint_holds_the_effective_config(mm_train):
    from mm_core.config import load_file

    result = mm_train([toy], "training.train_iters=1", "training.save_interval=1", "model.dim=16")
    saved = load_file(result.checkpoint / "config.yaml")
    assert saved["model"]["dim"] == 16
    assert saved["training"]["train_iters"] == 1


def test_a_checkpoint_with_optimizer_groups_keyed_by_index_still_resumes(mm_train, tmp_path, monkeypatch):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    from mm_core import checkpoint

    straight = mm_train([toy], DROPOUT, "training.train_iters=6", output_dir=tmp_path / "straight")
    run = tmp_path / "resumed"
    with monkeypatch.context() as patch:  # how mm wrote optimizer state before it keyed it by parameter name
        patch.setattr(checkpoint, "FLAT_OPTIMIZER", StateDictOptions(flatten_optimizer_state_dict=False))
        first = mm_train([toy], DROPOUT, "training.train_iters=3", "training.lr_decay_iters=6", output_dir=run)
    assert not checkpoint._flat_optimizer_state(first.checkpoint)
    second = mm_train([toy], DROPOUT, "training.train_iters=6", "training.resume=true", output_dir=run)
    assert {**first.losses, **second.losses} == straight.losses
    assert checkpoint._flat_optimizer_state(second.checkpoint)
