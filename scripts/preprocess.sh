#!/usr/bin/env bash
# Turn images + captions into CogView training LMDBs. All options go to preprocess_entry.py
# (see --help), e.g.
#   scripts/preprocess.sh --captions data/captions.tsv --images data/images \
#       --img-tokenizer-path pretrained/vqvae/vqvae_hard_biggerset_011.pt --output data/mydata.lmdb
# Relative paths are taken from the directory you run it in.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
exec python3 "$ROOT/preprocess_entry.py" "$@"
