#!/usr/bin/env bash
# Text to image: the original's scripts/text2image.sh, on GPU when there is one, else on CPU.
# Variables: CHECKPOINT_PATH NLAYERS NHIDDEN NATT MAXSEQLEN MPSIZE TEMP TOPK TOPP DEVICE
# INPUT_SOURCE OUTPUT_PATH BATCH_SIZE MAX_INFERENCE_BATCH_SIZE; extra arguments are passed on.
set -euo pipefail
source "$(dirname "$(realpath "$0")")/generation_common.sh"
resolve_checkpoint cogview-base cogview-demo
TEMP=${TEMP:-1.0}

run_generate "text2image" \
             --max-position-embeddings-finetune 1089 \
             --input-source "${INPUT_SOURCE:-./input.txt}" \
             --output-path "${OUTPUT_PATH:-samples_text2image}" \
             --batch-size "${BATCH_SIZE:-4}" \
             --max-inference-batch-size "${MAX_INFERENCE_BATCH_SIZE:-4}" \
             "$@"
