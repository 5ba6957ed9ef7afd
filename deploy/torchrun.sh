#!/usr/bin/env bash
# Contrastive pre-training on N nodes x G GPUs with NCCL (negatives all-gathered across every process).
#   NODES=4 GPUS=8 NODE_RANK=0 MASTER=host0:29500 deploy/torchrun.sh --recipe paper \
#       --manifest data/paper/manifest.jsonl --synthetic runs/paper/captions/tag_guided-tags_only/captions.jsonl \
#       --out runs/paper/dual-tag_guided
# device=auto puts each process on cuda:<LOCAL_RANK> ("cuda" alone would put every process on GPU 0).
set -euo pipefail
exec torchrun --nnodes "${NODES:-1}" --nproc_per_node "${GPUS:-8}" --node_rank "${NODE_RANK:-0}" \
    --rdzv_backend c10d --rdzv_endpoint "${MASTER:-localhost:29500}" \
    -m blat.pipeline.pretrain --set device=auto "$@"
