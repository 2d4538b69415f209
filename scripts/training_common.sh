#!/usr/bin/env bash
# Shared by pretrain_single_node.sh and pretrain_multiple_nodes.sh (sourced, not run).
main_dir="$(dirname "$(dirname "$(realpath "${BASH_SOURCE[0]}")")")"
PYTHON=${PYTHON:-python3}

# torchrun as `python -m torch.distributed.run`, but a failed or stopped run ends with the
# training process's one-line message and exit code instead of the launcher's traceback
TORCHRUN=("$PYTHON" "$main_dir/scripts/run_torchrun.py")

has_gpu() {
    [ "${FORCE_CPU:-0}" != "1" ] && "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null
}

cpu_environment() {
    # DeepSpeed on CPU: its CPU accelerator (gloo; oneCCL not needed), the cores shared out
    # among the CPU_PROCS processes unless the caller says otherwise (pretrain_gpt2.py also
    # disables DeepSpeed's shm op). `nproc --all`: plain nproc echoes OMP_NUM_THREADS back.
    export DS_ACCELERATOR=cpu
    local per_proc=$(( $(nproc --all) / ${CPU_PROCS:-1} ))
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( per_proc > 0 ? per_proc : 1 ))}
}

# tutorial_recipe <experiment> <dataset type> <train data> <train iters> <DeepSpeed json>:
# sets gpt_options to the options both original tutorial scripts share
# (12 layers, 1024 hidden, 16 heads, 1089 positions, cosine, warm-up 0.1, fp16, DeepSpeed).
# PRECISION=fp16 (the original's, default), bf16 or fp32 picks the precision flag; with fp32
# give a DeepSpeed json whose fp16 block is off (CONFIG_JSON), or its fp16 block still wins.
tutorial_recipe() {
    local precision
    case "${PRECISION:-fp16}" in
        fp16) precision=(--fp16) ;;
        bf16) precision=(--bf16) ;;
        fp32) precision=() ;;
        *) echo "error: PRECISION=${PRECISION} is not fp16, bf16 or fp32" >&2; exit 2 ;;
    esac
    gpt_options=(
       --experiment-name "$1"
       --img-tokenizer-num-tokens 8192
       --dataset-type "$2"
       --model-parallel-size "${MP_SIZE}"
       --num-layers 12
       --hidden-size 1024
       --num-attention-heads 16
       --save "$main_dir/data/checkpoints"
       --train-iters "$4"
       --resume-dataloader
       --train-data "$3"
       --split 949,50,1
       --distributed-backend nccl
       --lr-decay-style cosine
       --warmup .1
       --checkpoint-activations
       --deepspeed-activation-checkpointing
       --max-position-embeddings 1089
       --max-memory-length 0
       "${precision[@]}"
       --deepspeed
       --deepspeed_config "$5"
    )
}
