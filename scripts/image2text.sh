#!/usr/bin/env bash
# Image to text (captioning): the original's scripts/image2text.sh, on GPU when there is one, else on CPU.
# Variables: CHECKPOINT_PATH NLAYERS NHIDDEN NATT MAXSEQLEN MPSIZE TEMP TOPK TOPP DEVICE
# INPUT_SOURCE OUTPUT_PATH BATCH_SIZE MAX_INFERENCE_BATCH_SIZE; extra arguments are passed on.
set -euo pipefail
source "$(dirname "$(realpath "$0")")/generation_common.sh"
resolve_checkpoint cogview-caption cogview-demo
TEMP=${TEMP:-1.0}

run_generate "image2text" \
             --max-position-embeddings-finetune 1089 \
             --input-source "${INPUT_SOURCE:-interactive}" \
             --output-path "${OUTPUT_PATH:-samples_image2text}" \
             --batch-size "${BATCH_SIZE:-8}" \
             --max-inference-batch-size "${MAX_INFERENCE_BATCH_SIZE:-8}" \
             --debug \
             "$@"
