"""The Megatron-shaped training loop that drives a plugin's hooks."""

from __future__ import annotations

import contextlib
import logging
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import pluggy
import torch

from mm_core import lora
from mm_core.checkpoint import CheckpointManager, list_checkpoints
from mm_core.data_iter import DataIterator
from mm_core.errors import CheckpointError, ConfigError, MMError, PluginError
from mm_core.metrics import MetricsLogger, peak_memory_gib, peak_tflops
from mm_core.optim import build_optimizer, build_scheduler
from mm_core.plan import ParallelPlan
from mm_core.plugins import plugin_stack
from mm_core.preemption import StopSignals, restart_count, signal_name
from mm_core.runtime import Runtime

log = logging.getLogger("mm")


@dataclass
class TrainResult:
    """What a finished run leaves behind."""

    step: int
    losses: dict[int, float]
    checkpoint: Path | None
    output_dir: Path
    stopped_by: int = 0  # the stop signal (SIGTERM, SIGUSR1) that ended the run early, 0 when it ran to the end


def accumulation_steps(training, dp_size: int) -> int:
    """Micro-batches per optimizer step: global / (micro × data-parallel size), which must divide."""
    for key in ("micro_batch_size", "global_batch_size"):
        if training[key] < 1:
            raise ConfigError(f"training.{key} must be at least 1, got {training[key]}")
    per_step = training.micro_batch_size * dp_size
    if training.global_batch_size % per_step:
        raise ConfigError(
            f"training.global_batch_size {training.global_batch_size} is not divisible by "
            f"micro_batch_size × data-parallel size = {training.micro_batch_size} × {dp_size}"
        )
    return training.global_batch_size // per_step


@runtime_checkable
class StepRunner(Protocol):
    """A model that runs a whole step's forward and backward itself; ``parallelize_model`` may return one.

    Pipeline parallelism needs this: its schedule interleaves the forwards and backwards of all micro-batches
    across ranks, so no per-micro-batch loop in the trainer can drive it, and a gradient norm spans parameters
    held by other ranks. The trainer stays engine-agnostic: it draws the micro-batches, hands them over with
    the plugin's loss and its autocast, and still owns the optimizer, LR schedule, logging and checkpoints
    (the runner is an ``nn.Module`` whose parameters carry the same names as without the engine).
    """

    def forward_backward(
        self,
        batches: list,
        loss_fn: Callable[[Any, Any], tuple[torch.Tensor, dict]],
        autocast: Callable[[], contextlib.AbstractContextManager],
        backward: bool = True,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Forward (and backward unless ``backward`` is False) every batch; the summed loss and metrics.

        ``loss_fn(output, batch)`` is the plugin's loss; gradients must end as the mean over the batches. The
        result is the same on every rank that shares these batches.
        """

    def clip_grad_norm_(self, max_norm: float) -> torch.Tensor:
        """Clip the gradients by their total 2-norm over all ranks holding parts of the model; returns the norm."""


def _grad_sync(model: torch.nn.Module, enabled: bool):
    """Skip gradient reduction on all but the last micro-batch (DDP's no_sync, FSDP2's requires_gradient_sync)."""
    if hasattr(model, "set_requires_gradient_sync"):
        model.set_requires_gradient_sync(enabled)
        return contextlib.nullcontext()
    if not enabled and hasattr(model, "no_sync"):
        return model.no_sync()
    return contextlib.nullcontext()


def _call(hook, name: str, **kwargs):
    result = hook(**kwargs)
    if result is None:
        raise PluginError(f"no plugin returned a value from hook {name!r}")
    return result


def model_plan(hook, model: torch.nn.Module, config) -> ParallelPlan:
    """The plugins' ``parallel_plan`` for ``model``, checked; an empty plan when no plugin gives one."""
    plan = hook.parallel_plan(model=model, config=config)
    if plan is None:
        return ParallelPlan()
    if not isinstance(plan, ParallelPlan):
        raise PluginError(f"parallel_plan must return an mm_core.ParallelPlan, got {type(plan).__name__}")
    return plan


class Trainer:
    """Builds model, data, optimizer and checkpoints from hooks and runs ``train_iters`` steps."""

    def __init__(self, pm: pluggy.PluginManager, runtime: Runtime) -> None:
        self.pm = pm
        self.rt = runtime
        self.cfg = runtime.config
        self.training = self.cfg.training
        self.autocast_dtype = torch.bfloat16 if self.training.bf16 else None
        self.peak_tflops = self.cfg.logging.get("peak_tflops") or peak_tflops(runtime.device)

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.rt.device.type, dtype=self.autocast_dtype)

    def _batch(self, data_iter: DataIterator, model: torch.nn.Module) -> tuple[Any, float]:
        """The next micro-batch and the seconds spent waiting for it."""
        t0 = time.perf_counter()
        batch = _call(self.pm.hook.get_batch, "get_batch", data_iterator=data_iter, runtime=self.rt, model=model)
        return batch, time.perf_counter() - t0

    def _loss_of(self, output, batch) -> tuple[torch.Tensor, dict]:
        """The plugin's loss and metrics of one micro-batch's output, checked."""
        result = _call(self.pm.hook.loss_func, "loss_func", output=output, batch=batch, runtime=self.rt)
        if not (isinstance(result, tuple) and len(result) == 2):
            raise PluginError("loss_func must return (loss, metrics dict)")
        loss, metrics = result
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            got = f"a tensor of shape {list(loss.shape)}" if isinstance(loss, torch.Tensor) else type(loss).__name__
            raise PluginError(f"loss_func must return a scalar tensor as loss, got {got}: reduce it, e.g. .mean()")
        return loss, dict(metrics or {})

    def _loss(self, data_iter: DataIterator, model: torch.nn.Module) -> tuple[torch.Tensor, dict, float]:
        """Loss and metrics of one micro-batch, and the seconds spent waiting for it."""
        batch, data_s = self._batch(data_iter, model)
        with self._autocast():
            output = _call(self.pm.hook.forward_step, "forward_step", batch=batch, model=model, runtime=self.rt)
            loss, metrics = self._loss_of(output, batch)
        return loss, metrics, data_s

    def _run_steps(
        self, model, data_iter: DataIterator, count: int, backward: bool = True
    ) -> tuple[torch.Tensor, dict[str, float], float]:
        """Forward (and backward) ``count`` micro-batches: summed loss, summed metrics, seconds waiting for data.

        A StepRunner gets them all at once; otherwise they run one by one, gradients reduced after the last.
        """
        if isinstance(model, StepRunner):
            drawn = [self._batch(data_iter, model) for _ in range(count)]
            loss, sums = model.forward_backward([b for b, _ in drawn], self._loss_of, self._autocast, backward)
            return loss, sums, sum(wait for _, wait in drawn)
        total = torch.zeros((), device=self.rt.device)
        sums: dict[str, float] = {}
        data_time = 0.0
        for micro in range(count):
            with _grad_sync(model, micro == count - 1) if backward else contextlib.nullcontext():
                loss, extra, wait = self._loss(data_iter, model)
                data_time += wait
                if backward:
                    (loss / count).backward()
            total += loss.detach()
            for key, value in extra.items():
                sums[key] = sums.get(key, 0.0) + float(value)
        return total, sums, data_time

    def train(self) -> TrainResult:
        """Run the configured number of steps, evaluating, logging and checkpointing as configured."""
        rt, training, hook = self.rt, self.training, self.pm.hook
        accum = accumulation_steps(training, rt.dp_size)
        # The datasets first: a typo in a data path is found before a large model is built and placed. They draw
        # from a copy of the seeded random state, so the model's initial weights do not depend on the data.
        with torch.random.fork_rng(devices=[]):
            datasets = _call(hook.datasets_provider, "datasets_provider", config=self.cfg, runtime=rt)
        if not (isinstance(datasets, (tuple, list)) and len(datasets) == 3):
            raise PluginError("datasets_provider must return (train, valid, test)")
        model = _call(hook.model_provider, "model_provider", config=self.cfg, runtime=rt)
        plan = model_plan(hook, model, self.cfg)
        adapted = None
        if lora.enabled(self.cfg):  # peft is imported only then
            plan, adapted = lora.apply(model, plan, self.cfg)
        model = _call(
            hook.parallelize_model, "parallelize_model", model=model, plan=plan, config=self.cfg, runtime=rt
        )
        train_iter = DataIterator(datasets[0], "train", seed=training.seed,
                                  samples_per_batch=training.micro_batch_size * rt.dp_size)
        valid_iter = DataIterator(datasets[1], "valid", seed=training.seed) if datasets[1] is not None else None
        optimizer = build_optimizer(model, training, rt.device)
        scheduler = build_scheduler(optimizer, training)
        ckpt = CheckpointManager(rt.output_dir / "checkpoints", rt, keep_last=training.keep_last,
                                 plugins=plugin_stack(self.pm))

        step = 0
        resumed_from: Path | None = None
        if restart_count() and not training.resume and rt.is_main:
            log.warning("torchrun restarted the workers (restart %d): resuming from the newest checkpoint",
                        restart_count())
        if training.resume or restart_count():
            path = ckpt.resumable()
            if path is None and list_checkpoints(ckpt.root):
                raise CheckpointError(f"every checkpoint in {ckpt.root} is damaged (see the warnings above): "
                                      "nothing to resume from; move them away to start from step 0")
            if path is None:
                log.info("no checkpoint in %s: starting from step 0", ckpt.root)
            else:
                step = ckpt.load(path, model, optimizer, scheduler, train_iter)
                resumed_from = path
                log.info("resumed from %s at step %d", path, step)

        metrics = MetricsLogger(rt.output_dir, training.train_iters, step, self.cfg.logging, rt.is_main)
        n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
        metrics.print(
            f"training {n_params / 1e6:.2f}M parameters on {rt.world_size} × {rt.device.type} "
            f"| {accum} micro-batch(es) of {training.micro_batch_size} per step "
            f"| global batch {training.global_batch_size} | steps {step}→{training.train_iters}"
        )
        if adapted:
            metrics.print(adapted)
        losses: dict[int, float] = {}
        last_saved: Path | None = None
        in_a_row = 0
        model.train()
        stopped_by = 0
        with StopSignals() as signals, contextlib.closing(metrics):
            while step < training.train_iters:
                values = self._step(model, optimizer, scheduler, train_iter, accum)
                step += 1
                losses[step] = values["loss"]
                in_a_row = in_a_row + 1 if values.pop("skipped") else 0
                if in_a_row:
                    metrics.print(self._nonfinite(step, values, in_a_row, last_saved or resumed_from))
                if step % self.cfg.logging.log_interval == 0 or step == training.train_iters:
                    values["peak_mem_gib"] = peak_memory_gib(rt.device)
                    metrics.log(step, values)
                metrics.advance(step, values["loss"])
                if valid_iter is not None and training.eval_interval and step % training.eval_interval == 0:
                    metrics.log(step, self.evaluate(model, valid_iter), prefix="valid")
                stopped_by = signals.agreed(rt.device)
                due = training.save_interval and (step % training.save_interval == 0 or step == training.train_iters)
                if due or stopped_by:
                    last_saved = ckpt.save(step, model, optimizer, scheduler, train_iter)
                    metrics.print(f"saved checkpoint {last_saved}")
                if stopped_by:
                    metrics.print(f"stopped by {signal_name(stopped_by)} after step {step}: run the same command "
                                  f"with --resume to continue from {last_saved}")
                    break
        if not stopped_by:
            hook.after_training(config=self.cfg, runtime=rt, checkpoint=last_saved)
        return TrainResult(step, losses, last_saved, rt.output_dir, stopped_by)

    def _step(self, model, optimizer, scheduler, train_iter: DataIterator, accum: int) -> dict:
        """One optimizer step, skipped (``values["skipped"]``) when the loss or gradient norm is not finite."""
        rt = self.rt
        start = time.perf_counter()
        total_loss, sums, data_time = self._run_steps(model, train_iter, accum)
        grad_norm = self._clip(model)
        mean_loss = float(rt.all_reduce_mean(total_loss / accum))
        if hasattr(grad_norm, "full_tensor"):
            grad_norm = grad_norm.full_tensor()
        norm = None if grad_norm is None else float(grad_norm)
        skipped = not (math.isfinite(mean_loss) and (norm is None or math.isfinite(norm)))
        lr = optimizer.param_groups[0]["lr"]
        if not skipped:
            optimizer.step()
        with warnings.catch_warnings():
            # A skipped update still advances the schedule; torch warns of a scheduler step without an optimizer step.
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step", category=UserWarning)
            scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        values = {"loss": mean_loss, "lr": lr, "skipped": skipped}
        if norm is not None:
            values["grad_norm"] = norm
        step_s = time.perf_counter() - start
        values["step_s"] = step_s
        values["data_s"] = data_time
        values["samples_per_s"] = self.training.global_batch_size / step_s
        tokens = sums.pop("tokens", None)
        if tokens is not None:
            values["tokens_per_s"] = tokens * rt.dp_size / step_s
        flops = sums.pop("flops", None)
        if flops is not None:
            values["tflops"] = flops / step_s / 1e12
            if self.peak_tflops:
                values["mfu"] = values["tflops"] / self.peak_tflops
        values.update({k: v / accum for k, v in sums.items()})
        return values

    def _clip(self, model) -> torch.Tensor | None:
        """Clip the gradients to ``clip_grad`` and return their norm; with skipped steps allowed, the norm only."""
        max_norm = self.training.clip_grad or 0
        if max_norm <= 0:
            if not self.training.skip_nonfinite_steps:
                return None
            max_norm = math.inf
        if isinstance(model, StepRunner):
            return model.clip_grad_norm_(max_norm)
        return torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None], max_norm)

    def _nonfinite(self, step: int, values: dict, in_a_row: int, checkpoint: Path | None) -> str:
        """The line for a step whose update was skipped; MMError once more steps in a row than allowed were."""
        allowed = self.training.skip_nonfinite_steps
        what = f"loss {values['loss']}" + (f", grad norm {values['grad_norm']}" if "grad_norm" in values else "")
        if in_a_row > allowed:
            last = f"the last good checkpoint is {checkpoint}" if checkpoint else "no checkpoint was saved"
            raise MMError(
                f"{what} at step {step}: training diverged ({in_a_row} non-finite step(s) in a row, "
                f"training.skip_nonfinite_steps is {allowed}); {last}"
            )
        return f"step {step}: {what} is not finite: update skipped ({in_a_row} in a row, at most {allowed})"

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module, valid_iter: DataIterator) -> dict:
        """Mean loss over ``training.eval_iters`` validation batches."""
        model.eval()
        total, _, _ = self._run_steps(model, valid_iter, self.training.eval_iters, backward=False)
        model.train()
        return {"loss": float(self.rt.all_reduce_mean(total / self.training.eval_iters))}
