#!/usr/bin/env bash
# The paper's 72-model CLIP ViT-B/32 sweep on SLURM (see docs/cluster.md).
#   1. the zero-shot model and the LP init (model_0) - one GPU each;
#   2. 71 end-to-end fine-tunes from the LP init, as one SLURM job array.
# Every job writes one ingredient under $SOUP_OUTPUT_DIR/<name>/ingredients/; preempted or
# timed-out jobs are requeued and resume from their last checkpoint; rerunning this script
# submits no finished ingredient again. Edit PARTITION / ACCOUNT and the paths, then run it from the
# repository root on a login node.
set -euo pipefail

PARTITION=${PARTITION:-gpu}
ACCOUNT=${ACCOUNT:-null}
NAME=${NAME:-vitb32_sweep}
export SOUP_DATA_DIR=${SOUP_DATA_DIR:-/datasets}             # imagenet/, sketch/, imagenet-r/, ...
export SOUP_OUTPUT_DIR=${SOUP_OUTPUT_DIR:-$PWD/outputs}
export SOUP_CACHE_DIR=${SOUP_CACHE_DIR:-$PWD/.cache/soup_exp} # pretrained weights, splits, features

SLURM=(launcher=slurm "hydra.launcher.partition=${PARTITION}" "hydra.launcher.account=${ACCOUNT}"
       "name=${NAME}" model=vit_b32)

# 1. zero-shot baseline and LP init (model_0), one array of two jobs; both finish before
#    the fine-tunes start.
soup-exp finetune -m "${SLURM[@]}" sweep=zeroshot,lp_init

# 2. the 71 fine-tunes: member i draws its hyperparameters from (sweep.seed, i).
#    One GPU each (global batch 512 via 2 accumulation steps fits a 40 GB card); for 4 GPUs
#    per job use hydra.launcher.gpus_per_node=4 hydra.launcher.tasks_per_node=4 instead.
soup-exp finetune -m "${SLURM[@]}" sweep=paper_vitb32 'sweep.index=range(71)' \
  train.batch_size=512 train.grad_accum=2 \
  hydra.launcher.gpus_per_node=1 hydra.launcher.tasks_per_node=1 hydra.launcher.timeout_min=720

# 3. soups and evaluation, one SLURM job each on the same partition (one GPU); the report
#    reads results.jsonl only and runs here.
soup-exp soup -m "${SLURM[@]}"
soup-exp evaluate -m "${SLURM[@]}"
soup-exp report "results=${SOUP_OUTPUT_DIR}/${NAME}/results.jsonl" compare=paper_vitb32
