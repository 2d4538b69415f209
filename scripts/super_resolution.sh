#!/usr/bin/env bash
# Super-resolution by overlapping windows (magnify): the original's scripts/super_resolution.sh, on GPU when there is one, else on CPU.
# Variables: CHECKPOINT_PATH NLAYERS NHIDDEN NATT MAXSEQLEN MPSIZE TEMP TOPK TOPP DEVICE
# INPUT_SOURCE OUTPUT_PATH BATCH_SIZE MAX_INFERENCE_BATCH_SIZE; extra arguments are passed on.
set -euo pipefail
source "$(dirname "$(realpath "$0")")/generation_common.sh"
resolve_checkpoint cogview-sr cogview-demo-sr
TEMP=${TEMP:-1.02}

run_generate "super-resolution" \
             --max-position-embeddings-finetune 1345 \
             --input-source "${INPUT_SOURCE:-interactive}" \
             --output-path "${OUTPUT_PATH:-samples_sr}" \
             --batch-size "${BATCH_SIZE:-1}" \
             --debug \
             "$@"
