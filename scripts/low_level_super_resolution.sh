#!/usr/bin/env bash
# Low-level super-resolution: the original's scripts/low_level_super_resolution.sh, on GPU when there is one, else on CPU.
# Variables: CHECKPOINT_PATH NLAYERS NHIDDEN NATT MAXSEQLEN MPSIZE TEMP TOPK TOPP DEVICE
# INPUT_SOURCE OUTPUT_PATH BATCH_SIZE MAX_INFERENCE_BATCH_SIZE; extra arguments are passed on.
set -euo pipefail
source "$(dirname "$(realpath "$0")")/generation_common.sh"
resolve_checkpoint cogview-sr cogview-demo-sr
TEMP=${TEMP:-1.02}

run_generate "low-level super-resolution" \
             --max-position-embeddings-finetune 1345 \
             --input-source "${INPUT_SOURCE:-interactive}" \
             --output-path "${OUTPUT_PATH:-samples_low_level_sr}" \
             --batch-size "${BATCH_SIZE:-4}" \
             --max-inference-batch-size "${MAX_INFERENCE_BATCH_SIZE:-4}" \
             "$@"
