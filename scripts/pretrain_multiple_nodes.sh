#!/usr/bin/env bash
# Pretrain CogView on several nodes: the original's recipe (2 nodes x 8 GPUs, InfiniBand,
# ali_vqvae_hard_biggerset_011.lmdb, DeepSpeed ZeRO-1 with ds_config_zero.json, fp16).
#
# Two launch paths:
#  * hostfile (the original's): run once, on the first node, with passwordless ssh and pdsh
#    (see env/): `deepspeed --hostfile $HOST_FILE_PATH` starts every node. Taken when
#    NODE_RANK is not set and there is a GPU or the hostfile exists.
#  * torchrun (no hostfile, no ssh): run on EVERY node with NODE_RANK=0..NUM_WORKERS-1 and
#    MASTER_ADDR=<address of node 0>, e.g.
#       NODE_RANK=0 MASTER_ADDR=10.0.0.1 bash scripts/pretrain_multiple_nodes.sh   # node 0
#       NODE_RANK=1 MASTER_ADDR=10.0.0.1 bash scripts/pretrain_multiple_nodes.sh   # node 1
#    This path is taken whenever NODE_RANK is set.
# Without a GPU each node runs CPU_PROCS processes (default 1) on gloo, bf16 instead of fp16;
# without NODE_RANK or a hostfile on such a machine it trains on this node alone.
# Extra arguments go last, so they override the recipe.
set -euo pipefail
source "$(dirname "$(realpath "$0")")/training_common.sh"

NUM_WORKERS=${NUM_WORKERS:-2}
NUM_GPUS_PER_WORKER=${NUM_GPUS_PER_WORKER:-8}
MP_SIZE=${MP_SIZE:-1}
OPTIONS_NCCL=${OPTIONS_NCCL:-"NCCL_DEBUG=info NCCL_IB_DISABLE=0 NCCL_SOCKET_IFNAME=ib0 NCCL_NET_GDR_LEVEL=2"}
HOST_FILE_PATH=${HOST_FILE_PATH:-"$main_dir/hostfile"}
config_json=${CONFIG_JSON:-"$main_dir/scripts/ds_config_zero.json"}

tutorial_recipe cogview-ali_fashion_tutorial-12-1024-16 TokenizedDataset ./data/ali_vqvae_hard_biggerset_011.lmdb 40000 "${config_json}"

if [ -z "${NODE_RANK:-}" ] && has_gpu; then
    run_cmd=(env ${OPTIONS_NCCL} deepspeed --num_nodes "${NUM_WORKERS}" --num_gpus "${NUM_GPUS_PER_WORKER}"
             --hostfile "${HOST_FILE_PATH}" "$main_dir/pretrain_gpt2.py" "${gpt_options[@]}" "$@")
elif [ -z "${NODE_RANK:-}" ] && [ -f "${HOST_FILE_PATH}" ]; then
    # the hostfile launcher on CPU nodes: CPU_PROCS processes on each of the first NUM_WORKERS hosts
    cpu_environment
    echo "No GPU found: training on CPU with ${CPU_PROCS:-1} process(es) on each of ${NUM_WORKERS} nodes of ${HOST_FILE_PATH} (gloo, bf16 instead of fp16)" >&2
    run_cmd=(deepspeed --num_nodes "${NUM_WORKERS}" --num_gpus "${CPU_PROCS:-1}" --hostfile "${HOST_FILE_PATH}"
             "$main_dir/pretrain_gpt2.py" "${gpt_options[@]}" --device cpu "$@")
else
    if has_gpu; then
        procs=${NUM_GPUS_PER_WORKER}
        device_args=()
        env_prefix=(env ${OPTIONS_NCCL})
    else
        procs=${CPU_PROCS:-1}
        device_args=(--device cpu)
        env_prefix=(env)
        cpu_environment
        echo "No GPU found: training on CPU with ${procs} process(es) per node (gloo, bf16 instead of fp16)" >&2
    fi
    if [ -z "${NODE_RANK:-}" ]; then
        echo "NODE_RANK is not set and there is no ${HOST_FILE_PATH}: training on this node only (set NODE_RANK and MASTER_ADDR on every node for several)" >&2
        nodes=1; node_rank=0; master_addr=127.0.0.1
    else
        nodes=${NUM_WORKERS}; node_rank=${NODE_RANK}; master_addr=${MASTER_ADDR:?set MASTER_ADDR to the address of node 0}
    fi
    run_cmd=("${env_prefix[@]}" "${TORCHRUN[@]}" --nnodes "${nodes}" --node_rank "${node_rank}"
             --nproc_per_node "${procs}" --master_addr "${master_addr}" --master_port "${MASTER_PORT:-29500}"
             "$main_dir/pretrain_gpt2.py" "${gpt_options[@]}" "${device_args[@]}" "$@")
fi
echo "${run_cmd[@]}"
exec "${run_cmd[@]}"
