"""MindSpeed-MM launch scripts' Megatron flags on ``mm run`` / ``mm config``."""

from __future__ import annotations

import json

import pytest
import yaml

from mm_core.cli import main
from mm_core.config import wrap
from mm_core.errors import ConfigError
from mm_core.launch_flags import translate
from mm_core.optim import build_scheduler, lr_factor

TOY = "mm_core.testing.toy"

# The GPT_ARGS, MM_ARGS and OUTPUT_ARGS of MindSpeed-MM's examples/wan2.1/14b/t2v/pretrain_fsdp2.sh, with the
# paths made local (what `torchrun ... pretrain_sora.py` receives).
WAN_14B_FSDP2 = """
    --tensor-model-parallel-size 1 --pipeline-model-parallel-size 1 --virtual-pipeline-model-parallel-size 1
    --context-parallel-size 1 --context-parallel-algo ulysses_cp_algo --micro-batch-size 1 --global-batch-size 8
    --num-workers 8 --lr 1e-5 --min-lr 1e-5 --adam-beta1 0.9 --adam-beta2 0.999 --adam-eps 1e-8
    --lr-decay-style constant --weight-decay 1e-2 --lr-warmup-init 0 --lr-warmup-iters 0 --clip-grad 1.0
    --train-iters 5000 --no-gradient-accumulation-fusion --distributed-timeout-minutes 20 --use-torch-fsdp2
    --untie-embeddings-and-output-weights --ckpt-format torch_dcp --optimizer-selection fused_torch_adamw
    --use-cpu-initialization --attention-mask-type general
    --mm-tool tools.json --log-interval 1 --save-interval 10000 --eval-interval 10000 --eval-iters 10
    --save runs/wan14b --distributed-backend nccl
""".split()  # noqa: SIM905 (the script's text as it reads)


def _config(capsys, *args: str) -> dict:
    assert main(["config", "--plugin", TOY, *args]) == 0
    return yaml.safe_load(capsys.readouterr().out)


def _config_and_warnings(capsys, *args: str) -> tuple[dict, list[str]]:
    assert main(["config", "--plugin", TOY, *args]) == 0
    out, err = capsys.readouterr()
    return yaml.safe_load(out), err.splitlines()


def test_a_launch_script_s_flags_set_the_config_and_the_kernel_flags_are_named_as_ignored(capsys):
    config, ignored = _config_and_warnings(capsys, *WAN_14B_FSDP2)
    training = config["training"]
    assert (training["micro_batch_size"], training["global_batch_size"], training["train_iters"]) == (1, 8, 5000)
    assert (training["lr"], training["min_lr"], training["lr_decay_style"]) == (1e-5, 1e-5, "constant")
    assert (training["weight_decay"], training["adam_eps"], training["clip_grad"]) == (1e-2, 1e-8, 1.0)
    assert (training["save_interval"], training["eval_iters"], training["output_dir"]) == (10000, 10, "runs/wan14b")
    assert config["parallel"]["fsdp2"]["enable"] is True
    assert config["parallel"]["cp"] == {**config["parallel"]["cp"], "size": 1, "mode": "ulysses"}
    assert config["logging"]["log_interval"] == 1
    for flag in ("--use-cpu-initialization", "--ckpt-format torch_dcp", "--mm-tool tools.json",
                 "--no-gradient-accumulation-fusion", "--distributed-backend nccl"):
        assert any(line.startswith(f"warning: {flag}") and "ignored" in line for line in ignored), flag
    # --num-workers names a key the toy has no data loader section for: said, not dropped silently
    assert any("--num-workers has no meaning for this plugin" in line for line in ignored)


def test_mm_model_and_mm_data_are_the_section_files(tmp_path, capsys):
    model = tmp_path / "model.json"
    model.write_text(json.dumps({"dim": 16, "depth": 2}))
    config = _config(capsys, "--mm-model", str(model), "--seed", "42", "--bf16")
    assert (config["model"]["dim"], config["model"]["depth"]) == (16, 2)
    assert (config["training"]["seed"], config["training"]["bf16"]) == (42, True)


def test_dotted_overrides_still_win_over_flags(capsys):
    assert _config(capsys, "--lr", "1e-3", "training.lr=0.5")["training"]["lr"] == 0.5


def test_megatron_recompute_and_parallel_flags(capsys):
    parallel = _config(capsys, "--recompute-granularity", "full", "--recompute-method", "block",
                       "--recompute-num-layers", "2", "--context-parallel-algo", "megatron_cp_algo",
                       "--virtual-pipeline-model-parallel-size", "2", "--sequence-parallel")["parallel"]
    assert parallel["recompute"] == {"granularity": "full", "method": "block", "num_layers": 2}
    assert (parallel["cp"]["mode"], parallel["pp"]["virtual_stages"], parallel["tp"]["sequence_parallel"]) == (
        "ring", 2, True)


@pytest.mark.parametrize(("argv", "message"), [
    (["--micro-batch-size", "two"], "error: --micro-batch-size 'two': expected int"),
    (["--lr"], "error: --lr needs a value"),
    (["--context-parallel-algo", "fancy_algo"], "error: --context-parallel-algo 'fancy_algo': expected one of"),
    (["--recompute-granularity", "most"], "parallel.recompute.granularity must be one of None, full, selective"),
])
def test_a_bad_flag_value_is_one_line_naming_the_flag(capsys, argv, message):
    assert main(["config", "--plugin", TOY, *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_translate_keeps_mm_s_own_arguments_in_order():
    flags = translate(["--plugin", "toy", "--mm-data", "d.json", "--lora-target-modules", "proj_q", "ffn.0",
                       "--train-iters=7", "training.seed=3"])
    assert flags.argv == ["--plugin", "toy", "--data", "d.json", "training.seed=3"]
    assert flags.settings == [("--lora-target-modules", ("model.lora.target_modules",), ["proj_q", "ffn.0"]),
                              ("--train-iters", ("training.train_iters",), 7)]


def test_warmup_fraction_and_warmup_init_as_megatron_defines_them():
    training = wrap({"lr": 1.0, "min_lr": 0.0, "lr_warmup_iters": 3, "lr_warmup_fraction": 0.1,
                     "lr_warmup_init": 0.5, "lr_decay_style": "constant", "lr_decay_iters": None, "train_iters": 40})
    # the fraction (of 40 steps) wins over the plugin's lr_warmup_iters: 4 warmup steps from 0.5 up to 1.0
    assert [lr_factor(s, training) for s in range(5)] == pytest.approx([0.625, 0.75, 0.875, 1.0, 1.0])
    with pytest.raises(ConfigError, match="lr_warmup_fraction must be between 0 and 1"):
        build_scheduler(None, wrap({**training, "lr_warmup_fraction": 2.0}))
