#!/usr/bin/env bash
# Pretrain CogView on one node: the original's single-node recipe (12 layers, 1024 hidden,
# bird_animal.bin, DeepSpeed with ds_config.json, fp16).
# With GPUs: the `deepspeed` launcher on NUM_GPUS_PER_WORKER GPUs, as the original.
# Without a GPU: torchrun on CPU with CPU_PROCS processes (default 1); DeepSpeed runs on
# gloo and fp16 becomes bf16.  Extra arguments go last, so they override the recipe.
set -euo pipefail
main_dir="$(dirname "$(dirname "$(realpath "$0")")")"
PYTHON=${PYTHON:-python3}
has_gpu() {
    [ "${FORCE_CPU:-0}" != "1" ] && "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null
}
cpu_environment() {
    # DeepSpeed on CPU: its CPU accelerator (gloo; oneCCL not needed), one thread per process
    # unless the caller says otherwise (pretrain_gpt2.py also disables DeepSpeed's shm op)
    export DS_ACCELERATOR=cpu
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
}

NUM_WORKERS=${NUM_WORKERS:-1}
NUM_GPUS_PER_WORKER=${NUM_GPUS_PER_WORKER:-8}
MP_SIZE=${MP_SIZE:-1}
OPTIONS_NCCL=${OPTIONS_NCCL:-"NCCL_DEBUG=info"}
HOST_FILE_PATH=${HOST_FILE_PATH:-"hostfile_single"}
config_json=${CONFIG_JSON:-"$main_dir/scripts/ds_config.json"}

gpt_options=(
       --experiment-name cogview-bird_animal_tutorial-12-1024-16
       --img-tokenizer-num-tokens 8192
       --dataset-type CompactBinaryDataset
       --model-parallel-size "${MP_SIZE}"
       --num-layers 12
       --hidden-size 1024
       --num-attention-heads 16
       --save "$main_dir/data/checkpoints"
       --train-iters 20000
       --resume-dataloader
       --train-data ./data/bird_animal.bin
       --split 949,50,1
       --distributed-backend nccl
       --lr-decay-style cosine
       --warmup .1
       --checkpoint-activations
       --deepspeed-activation-checkpointing
       --max-position-embeddings 1089
       --max-memory-length 0
       --fp16
       --txt-loss-scale 5
       --deepspeed
       --deepspeed_config "${config_json}"
)

if has_gpu; then
    hostfile_args=()
    [ -f "${HOST_FILE_PATH}" ] && hostfile_args=(--hostfile "${HOST_FILE_PATH}")
    run_cmd=(env ${OPTIONS_NCCL} deepspeed --num_nodes "${NUM_WORKERS}" --num_gpus "${NUM_GPUS_PER_WORKER}"
             "${hostfile_args[@]}" "$main_dir/pretrain_gpt2.py" "${gpt_options[@]}" "$@")
else
    echo "No GPU found: training on CPU with ${CPU_PROCS:-1} process(es) (gloo, bf16 instead of fp16)" >&2
    cpu_environment
    run_cmd=("$PYTHON" -m torch.distributed.run --nnodes 1 --nproc_per_node "${CPU_PROCS:-1}"
             --master_port "${MASTER_PORT:-$(( RANDOM % 55535 + 10000 ))}"
             "$main_dir/pretrain_gpt2.py" "${gpt_options[@]}" --device cpu "$@")
fi
echo "${run_cmd[@]}"
exec "${run_cmd[@]}"
