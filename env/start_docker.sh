#!/usr/bin/env bash
# Start the CogView container in the background as `bg-cogview`: all GPUs, host network
# and IPC, large shared memory, this repository mounted at /root/cogview.  Inside it, sshd
# starts and setup_connection.py writes the hostfile/ssh config for the IPs of
# env/ip_list.txt (one line, space-separated; default 127.0.0.1).
# Usage: bash env/start_docker.sh [image]     then: docker exec -it bg-cogview bash
set -euo pipefail
script_dir="$(dirname "$(realpath "$0")")"
repo_dir="$(dirname "$script_dir")"
IMAGE=${1:-${IMAGE:-cogview/cuda_torch_deepspeed:base}}
ip_file="$script_dir/ip_list.txt"
[ -f "$ip_file" ] || echo "127.0.0.1" > "$ip_file"
ips=$(tr '\n' ' ' < "$ip_file")

gpu_args=()
if command -v nvidia-smi >/dev/null 2>&1; then
    gpu_args=(--gpus all)
else
    echo "no nvidia-smi: starting the container without GPUs (training falls back to CPU)" >&2
fi

docker run -d --name bg-cogview "${gpu_args[@]}" \
    --network host --ipc host --privileged --shm-size 32g \
    --ulimit memlock=-1 --ulimit stack=67108864 \
    -v "$repo_dir":/root/cogview \
    "$IMAGE" \
    bash -c "/usr/sbin/sshd && python3 /root/cogview/env/setup_connection.py $ips && sleep infinity"
echo "started bg-cogview; enter it with: docker exec -it bg-cogview bash"
