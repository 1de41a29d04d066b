"""Checkpoints: bitwise resume, atomic writes, pruning, clear errors."""

from __future__ import annotations

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


def test_crash_mid_save_keeps_the_last_good_checkpoint(mm_train, monkeypatch):
    import mm_core.checkpoint as ckpt

    result = mm_train([toy], "training.train_iters=5")
    good = latest_checkpoint(result.output_dir / "checkpoints")
    assert good.name == "step_00000005"

    def exploding_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ckpt.dcp, "save", exploding_save)
    with pytest.raises(OSError, match="disk full"):
        mm_train([toy], "training.train_iters=10", "training.resume=true", output_dir=result.output_dir)
    assert latest_checkpoint(result.output_dir / "checkpoints") == good
    monkeypatch.undo()
    resumed = mm_train([toy], "training.train_iters=10", "training.resume=true", output_dir=result.output_dir)
    assert min(resumed.losses) == 6
    assert latest_checkpoint(result.output_dir / "checkpoints").name == "step_00000010"


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
