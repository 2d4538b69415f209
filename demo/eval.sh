#!/usr/bin/env bash
# Evaluate the shipped demo models on held-out shapes prompts and images (demo/evaluate.py):
# text2image, image2text, post-selection and super-resolution scored by the grammar checker.
#   ./scripts/eval_demo.sh                      # prints the numbers
#   ./scripts/eval_demo.sh --write-results      # and updates bench/RESULTS.md
# Options: --prompts N (held-out prompts per kind, default 100), --train-prompts N (training-split
# scenes scored the same way, no target: the generalisation gap; 0 skips), --sr-images N, --model DIR,
# --sr-model DIR, --json FILE, --guidance TASK=S (--guidance-scale instead of the checkpoint's, e.g.
# text2image=0.6), --post-select N (text2image's instead of the checkpoint's), --sr-top-k K.
# The whole default run takes about 10 minutes on 2 CPU cores (more with --post-select).
set -euo pipefail
main_dir="$(dirname "$(dirname "$(realpath "$0")")")"
# the repo root on the import path instead of a cd: paths given as flags stay relative to the caller
export PYTHONPATH="$main_dir${PYTHONPATH:+:$PYTHONPATH}"
exec python3 -m demo.evaluate "$@"
