#!/usr/bin/env bash
# Super-resolution (windows of magnify): the original's super_resolution.sh, on GPU when there is one, else on CPU.
# Extra arguments are passed through to generate_samples.py (last, so they win).
set -euo pipefail
source "$(dirname "$(realpath "$0")")/generation_common.sh"
resolve_checkpoint cogview-sr cogview-demo-sr

TEMP=${TEMP:-1.02}
TOPK=${TOPK:-200}
TOPP=${TOPP:-0}

python3 "$main_dir/generate_samples.py" \
       --deepspeed \
       "${MODEL_ARGS[@]}" \
       "${DEVICE_ARGS[@]}" \
       --load "$CHECKPOINT_PATH" \
       --generation-task "super-resolution" \
       --temperature $TEMP \
       --top_k $TOPK \
       --top_p $TOPP \
       --max-position-embeddings-finetune 1345 \
       --input-source ${INPUT_SOURCE:-interactive} \
       --output-path ${OUTPUT_PATH:-samples_sr} \
       --batch-size ${BATCH_SIZE:-1} \
       --debug \
       "$@"
