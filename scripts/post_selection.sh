#!/usr/bin/env bash
# Post-selection: rank images by the caption model's likelihood of the text: the original's scripts/post_selection.sh, on GPU when there is one, else on CPU.
# Variables: CHECKPOINT_PATH NLAYERS NHIDDEN NATT MAXSEQLEN MPSIZE TEMP TOPK TOPP DEVICE
# INPUT_SOURCE OUTPUT_PATH BATCH_SIZE MAX_INFERENCE_BATCH_SIZE; extra arguments are passed on.
set -euo pipefail
source "$(dirname "$(realpath "$0")")/generation_common.sh"
resolve_checkpoint cogview-caption cogview-demo
TEMP=${TEMP:-1.0}

run_generate "post-selection" \
             --max-position-embeddings-finetune 1089 \
             --input-source "${INPUT_SOURCE:-input_select.txt}" \
             --output-path "${OUTPUT_PATH:-samples_post_selection}" \
             --debug \
             "$@"
