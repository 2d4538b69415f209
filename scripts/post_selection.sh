#!/usr/bin/env bash
# Post-selection: rank images by the caption likelihood: the original's post_selection.sh, on GPU when there is one, else on CPU.
# Extra arguments are passed through to generate_samples.py (last, so they win).
set -euo pipefail
source "$(dirname "$(realpath "$0")")/generation_common.sh"
resolve_checkpoint cogview-caption cogview-demo

TEMP=${TEMP:-1.0}
TOPK=${TOPK:-200}
TOPP=${TOPP:-0}

python3 "$main_dir/generate_samples.py" \
       --deepspeed \
       "${MODEL_ARGS[@]}" \
       "${DEVICE_ARGS[@]}" \
       --load "$CHECKPOINT_PATH" \
       --generation-task "post-selection" \
       --temperature $TEMP \
       --top_k $TOPK \
       --top_p $TOPP \
       --max-position-embeddings-finetune 1089 \
       --input-source ${INPUT_SOURCE:-input_select.txt} \
       --output-path ${OUTPUT_PATH:-samples_post_selection} \
       --debug \
       "$@"
