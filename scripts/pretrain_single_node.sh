#!/usr/bin/env bash
# Pretrain CogView on one node: the original's single-node recipe (12 layers, 1024 hidden,
# bird_animal.bin, DeepSpeed with ds_config.json, fp16).
# With GPUs: the `deepspeed` launcher on NUM_GPUS_PER_WORKER GPUs, as the original.
# Without a GPU: torchrun on CPU with CPU_PROCS processes (default 1); DeepSpeed runs on
# gloo and fp16 becomes bf16.  Extra arguments go last, so they override the recipe.
set -euo pipefail
source "$(dirname "$(realpath "$0")")/training_common.sh"

NUM_WORKERS=${NUM_WORKERS:-1}
NUM_GPUS_PER_WORKER=${NUM_GPUS_PER_WORKER:-8}
MP_SIZE=${MP_SIZE:-1}
OPTIONS_NCCL=${OPTIONS_NCCL:-"NCCL_DEBUG=info"}
HOST_FILE_PATH=${HOST_FILE_PATH:-"hostfile_single"}
config_json=${CONFIG_JSON:-"$main_dir/scripts/ds_config.json"}

tutorial_recipe cogview-bird_animal_tutorial-12-1024-16 CompactBinaryDataset ./data/bird_animal.bin 20000 "${config_json}"
gpt_options+=(--txt-loss-scale 5)

if has_gpu; then
    hostfile_args=()
    [ -f "${HOST_FILE_PATH}" ] && hostfile_args=(--hostfile "${HOST_FILE_PATH}")
    run_cmd=(env ${OPTIONS_NCCL} deepspeed --num_nodes "${NUM_WORKERS}" --num_gpus "${NUM_GPUS_PER_WORKER}"
             "${hostfile_args[@]}" "$main_dir/pretrain_gpt2.py" "${gpt_options[@]}" "$@")
else
    echo "No GPU found: training on CPU with ${CPU_PROCS:-1} process(es) (gloo, bf16 instead of fp16)" >&2
    cpu_environment
    run_cmd=("${TORCHRUN[@]}" --nnodes 1 --nproc_per_node "${CPU_PROCS:-1}"
             --master_port "${MASTER_PORT:-$(( RANDOM % 55535 + 10000 ))}"
             "$main_dir/pretrain_gpt2.py" "${gpt_options[@]}" --device cpu "$@")
fi
echo "${run_cmd[@]}"
exec "${run_cmd[@]}"
