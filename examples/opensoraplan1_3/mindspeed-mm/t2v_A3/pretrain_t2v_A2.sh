#!/bin/bash
# MindSpeed-MM's examples/opensoraplan1.3/t2v_A3/pretrain_t2v_A2.sh with one change: `pretrain_sora.py` is now
# `mm run --plugin opensoraplan1_3`. It trains from the features data_feature.json names (MindSpeed-MM's
# feature store, as its get_sora_feature.py writes it). Flags that only tune Ascend or Megatron kernels are
# accepted with a warning naming them.
GPUS_PER_NODE=8
MASTER_ADDR=localhost
MASTER_PORT=29505
NNODES=1
NODE_RANK=0
WORLD_SIZE=$(($GPUS_PER_NODE*$NNODES))

TP=8
PP=1
VP=1
CP=1
MBS=1
ACC=1
GBS=$(($WORLD_SIZE*$MBS/$CP/$TP*$ACC))

MM_DATA="examples/opensoraplan1_3/mindspeed-mm/t2v_A3/data_feature.json"
MM_MODEL="examples/opensoraplan1_3/mindspeed-mm/t2v_A3/pretrain_t2v_model.json"
MM_TOOL="./mindspeed_mm/tools/tools.json"
# A MindSpeed-MM checkpoint (mm-convert OpenSoraPlanConverter hf_to_mm writes one), or a folder holding the
# release's transformer/ (config.json + safetensors)
LOAD_PATH="your_converted_dit_ckpt_dir"
SAVE_PATH="your_ckpt_path_to_save"

DISTRIBUTED_ARGS="
    --nproc_per_node $GPUS_PER_NODE \
    --nnodes $NNODES \
    --node_rank $NODE_RANK \
    --master_addr $MASTER_ADDR \
    --master_port $MASTER_PORT
"

GPT_ARGS="
    --tensor-model-parallel-size ${TP} \
    --pipeline-model-parallel-size ${PP} \
    --virtual-pipeline-model-parallel-size ${VP} \
    --context-parallel-size ${CP} \
    --context-parallel-algo ulysses_cp_algo \
    --micro-batch-size ${MBS} \
    --global-batch-size ${GBS} \
    --lr 1e-5 \
    --min-lr 1e-5 \
    --adam-beta1 0.9 \
    --adam-beta2 0.999 \
    --adam-eps 1e-15 \
    --lr-decay-style constant \
    --weight-decay 1e-2 \
    --lr-warmup-init 1e-5 \
    --lr-warmup-iters 0 \
    --clip-grad 1.0 \
    --train-iters 5000 \
    --no-gradient-accumulation-fusion \
    --load $LOAD_PATH \
    --bf16 \
    --recompute-granularity full \
    --recompute-method block \
    --recompute-num-layers 0 \
    --use-distributed-optimizer \
    --sequence-parallel \
    --allow-tf32 \
    --num-workers 4 \
"

MM_ARGS="
    --mm-data $MM_DATA \
    --mm-model $MM_MODEL \
    --mm-tool $MM_TOOL
"

OUTPUT_ARGS="
    --log-interval 1 \
    --save-interval 10000 \
    --eval-interval 10000 \
    --eval-iters 10 \
    --save $SAVE_PATH \
    --ckpt-format torch \
"

torchrun $DISTRIBUTED_ARGS $(which mm) run --plugin opensoraplan1_3 \
    $GPT_ARGS \
    $MM_ARGS \
    $OUTPUT_ARGS \
    --distributed-backend nccl
