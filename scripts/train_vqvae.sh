#!/usr/bin/env bash
# Train the VQ-VAE image tokenizer. All options go to `python3 -m vqvae.train` (see --help), e.g.
#   scripts/train_vqvae.sh --data data/images --save checkpoints/vqvae --device cuda
# Several GPUs on one node: NPROC=8 scripts/train_vqvae.sh --data ... --save ... --device cuda
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
NPROC="${NPROC:-1}"
if [ "$NPROC" -gt 1 ]; then
    exec python3 -m torch.distributed.run --standalone --nproc_per_node "$NPROC" -m vqvae.train "$@"
fi
exec python3 -m vqvae.train "$@"
