#!/usr/bin/env bash
# Train the shipped demo models: the recipe is demo/train.sh (same variables, same flags).
#   ./scripts/train_demo.sh                 # everything: about 6 h on 2 CPU cores
#   STEPS="gpt export" ./scripts/train_demo.sh
exec "$(dirname "$(dirname "$(realpath "$0")")")/demo/train.sh" "$@"
