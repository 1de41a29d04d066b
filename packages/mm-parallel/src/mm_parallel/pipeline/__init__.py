"""Pipeline parallelism: cut a plugin's layer stack into stages and run them with torch.distributed.pipelining.

A plugin's ``parallel_plan`` describes its model as ``pre → layers → post`` (:class:`mm_core.plan.PipelinePlan`).
Each pipeline rank holds its stages' layers (under their original indices, so ``blocks.7.fc1.weight`` is called
the same with and without PP), the ``pre_modules`` when it runs the first stage and the ``post_modules`` when it
runs the last. The last stage computes the loss; :class:`PipelineModel` runs a whole step's micro-batches through
a 1F1B, GPipe or interleaved 1F1B schedule.

plan: the plugin's plan resolved (:class:`StagePlan`), its coverage and the cut; layout: layer counts per stage;
split: each stage's module, copied from the model and pruned; chunk: a stage's forward; tied: weights shared by the
first and last stage; runner: the :class:`PipelineModel` the trainer drives; apply: :func:`apply_pipeline`.
"""

from mm_parallel.pipeline.apply import apply_pipeline
from mm_parallel.pipeline.layout import bubble_fraction, check_first_stage_stack, local_stages, stage_layer_counts
from mm_parallel.pipeline.plan import StagePlan, check_coverage, layer_ranges, pipeline_num_layers
from mm_parallel.pipeline.runner import PipelineModel, check_schedule
from mm_parallel.pipeline.split import split_stages

__all__ = [
    "PipelineModel",
    "StagePlan",
    "apply_pipeline",
    "bubble_fraction",
    "check_coverage",
    "check_first_stage_stack",
    "check_schedule",
    "layer_ranges",
    "local_stages",
    "pipeline_num_layers",
    "split_stages",
    "stage_layer_counts",
]
