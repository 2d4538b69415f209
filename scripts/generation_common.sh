#!/usr/bin/env bash
# Shared by the generation scripts (sourced, not run): checkpoint, model shape, device.
#
#   resolve_checkpoint <released name> <demo name>
# sets CHECKPOINT_PATH (the released model when present, else the shipped demo
# model, else a clear error) and MODEL_ARGS / DEVICE_ARGS for generate_samples.py.
# Variables of the original scripts are honoured: CHECKPOINT_PATH, NLAYERS, NHIDDEN,
# NATT, MAXSEQLEN, MPSIZE, TEMP, TOPK, TOPP; DEVICE picks the GPU (default 0).
# MPSIZE=N > 1 runs N processes under torchrun, one slice of the model each (a checkpoint
# split by python -m arch.change_mp SRC DST --model-parallel-size N); each process takes GPU
# LOCAL_RANK (CUDA_VISIBLE_DEVICES picks which), or an Nth of the CPU cores.

script_path=$(realpath "${BASH_SOURCE[0]}")
script_dir=$(dirname "$script_path")
main_dir=$(dirname "$script_dir")
MASTER_PORT=${MASTER_PORT:-$((RANDOM % 55535 + 10000))}
export MASTER_PORT

resolve_checkpoint() {
  local released=$1 demo=$2
  if [ -z "${CHECKPOINT_PATH:-}" ]; then
    CHECKPOINT_PATH="$main_dir/pretrained/cogview/$released"
    if [ ! -e "$CHECKPOINT_PATH" ] && [ -d "$main_dir/pretrained/cogview/$demo" ]; then
      echo "note: $CHECKPOINT_PATH not found; using the shipped demo model pretrained/cogview/$demo" >&2
      CHECKPOINT_PATH="$main_dir/pretrained/cogview/$demo"
    fi
  fi
  if [ ! -e "$CHECKPOINT_PATH" ]; then
    echo "error: checkpoint $CHECKPOINT_PATH not found. Put the released CogView model" \
         "($released) under pretrained/cogview/, train the demo models with" \
         "./scripts/train_demo.sh, or set CHECKPOINT_PATH." >&2
    exit 1
  fi
  MODEL_ARGS=(--model-parallel-size "${MPSIZE:-1}")
  if [ -f "$CHECKPOINT_PATH/model_config.json" ]; then
    # shapes and tokenizers come from the config next to the checkpoint; env vars still win
    [ -n "${NLAYERS:-}" ] && MODEL_ARGS+=(--num-layers "$NLAYERS")
    [ -n "${NHIDDEN:-}" ] && MODEL_ARGS+=(--hidden-size "$NHIDDEN")
    [ -n "${NATT:-}" ] && MODEL_ARGS+=(--num-attention-heads "$NATT")
    [ -n "${MAXSEQLEN:-}" ] && MODEL_ARGS+=(--max-position-embeddings "$MAXSEQLEN")
  else
    MODEL_ARGS+=(--num-layers "${NLAYERS:-48}" --hidden-size "${NHIDDEN:-2560}"
                 --num-attention-heads "${NATT:-40}" --max-position-embeddings "${MAXSEQLEN:-1089}"
                 --img-tokenizer-path "$main_dir/pretrained/vqvae/vqvae_hard_biggerset_011.pt"
                 --query-window 64 --key-window-times 4 --num-pivot 256 --is-sparse 0)
  fi
  if python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    DEVICE_ARGS=(--device "${DEVICE:-0}" --fp16)
  else
    DEVICE_ARGS=(--device cpu)
  fi
}

# run_generate <task> <args...>: generate_samples.py with the resolved checkpoint, the
# model/device arguments and TEMP/TOPK/TOPP; the caller's "$@" goes last, so it wins.
run_generate() {
  local task=$1
  shift
  local launcher=(python3)
  case "${MPSIZE:-1}" in
    '' | *[!0-9]* | 0*)
      echo "error: MPSIZE=${MPSIZE}: the number of processes, one per slice of the model (1, 2, 4...)" >&2
      exit 2 ;;
  esac
  if [ "${MPSIZE:-1}" != 1 ]; then
    # torchrun without the launcher's traceback (scripts/run_torchrun.py), one process per slice
    launcher=(python3 "$script_dir/run_torchrun.py" --standalone --nproc_per_node "$MPSIZE")
    if [ -z "${OMP_NUM_THREADS:-}" ]; then
      local per_proc=$(( $(nproc --all) / MPSIZE ))
      export OMP_NUM_THREADS=$(( per_proc > 0 ? per_proc : 1 ))
    fi
  fi
  # TOPK unset: the checkpoint's recorded top_k (model_config.json), else the original's 200
  local top_k=(--top_k "${TOPK:-200}")
  if [ -z "${TOPK:-}" ] && grep -qs '"top_k"' "$CHECKPOINT_PATH/model_config.json"; then top_k=(); fi
  "${launcher[@]}" "$main_dir/generate_samples.py" \
         --deepspeed \
         "${MODEL_ARGS[@]}" \
         "${DEVICE_ARGS[@]}" \
         --load "$CHECKPOINT_PATH" \
         --generation-task "$task" \
         --temperature "${TEMP:-1.0}" \
         "${top_k[@]}" \
         --top_p "${TOPP:-0}" \
         "$@"
}
