#!/usr/bin/env bash
# Evaluate the shipped demo models: the recipe is demo/eval.sh (same flags).
#   ./scripts/eval_demo.sh                      # prints the numbers
#   ./scripts/eval_demo.sh --write-results      # and updates bench/RESULTS.md
exec "$(dirname "$(dirname "$(realpath "$0")")")/demo/eval.sh" "$@"
