#!/usr/bin/env bash
# Start a CogView node: a container in the background with this repository mounted at
# /root/cogview, sshd on port 2222 (key-only), and setup_connection.py run inside it, which
# installs the cluster's key and writes ~/.ssh/config and the hostfile for the IPs of the
# IP list (node 0 first).  Run it on every node with the same IP list and key folder.
#
#   bash env/start_docker.sh [docker run options]      then: docker exec -it bg-cogview bash
#
# Variables (defaults in brackets):
#   IMAGE     [cogview/cuda_torch_deepspeed:base with nvidia-smi, else cogview/cpu_torch_deepspeed:base]
#   NAME      container name [bg-cogview]
#   NETWORK   [host]: the host's network and IPC, privileged (the original's set-up); or the name
#             of a docker network, with IP this container's address on it
#   IP_LIST   file of the node IPs, space separated [env/ip_list.txt; 127.0.0.1 when missing]
#   KEY_DIR   the cluster's ssh key pair, the same on every node [env/ssh/; made when missing]
#   HOSTFILE  the hostfile path inside the container [/root/cogview/hostfile]
#   SLOTS     processes per node in the hostfile [8 with nvidia-smi, else 1]
#   REPO_MODE rw or ro, how the repository is mounted [rw]
set -euo pipefail
script_dir="$(dirname "$(realpath "$0")")"
repo_dir="$(dirname "$script_dir")"

gpu_args=()
if command -v nvidia-smi >/dev/null 2>&1; then
    gpu_args=(--gpus all --ulimit memlock=-1 --ulimit stack=67108864)  # pinned memory for NCCL/InfiniBand
    IMAGE=${IMAGE:-cogview/cuda_torch_deepspeed:base}
    SLOTS=${SLOTS:-8}
else
    echo "no nvidia-smi: starting the container without GPUs (training runs on CPU)" >&2
    IMAGE=${IMAGE:-cogview/cpu_torch_deepspeed:base}
    SLOTS=${SLOTS:-1}
fi
NAME=${NAME:-bg-cogview}
NETWORK=${NETWORK:-host}
IP_LIST=${IP_LIST:-$script_dir/ip_list.txt}
KEY_DIR=${KEY_DIR:-$script_dir/ssh}
HOSTFILE=${HOSTFILE:-/root/cogview/hostfile}
[ -f "$IP_LIST" ] || echo "127.0.0.1" > "$IP_LIST"
ips=$(tr '\n' ' ' < "$IP_LIST")

docker image inspect "$IMAGE" >/dev/null 2>&1 \
    || { echo "error: image $IMAGE not found; build it with: bash env/build_image.sh" >&2; exit 1; }
if [ "$NETWORK" = host ]; then
    net_args=(--network host --ipc host --privileged)
else
    [ -n "${IP:-}" ] || { echo "error: NETWORK=$NETWORK needs IP, this container's address on it" >&2; exit 1; }
    net_args=(--network "$NETWORK" --ip "$IP" --hostname "$NAME")
fi
mkdir -p "$KEY_DIR"
chmod 700 "$KEY_DIR"

docker run -d --name "$NAME" "${gpu_args[@]}" "${net_args[@]}" --shm-size "${SHM_SIZE:-32g}" \
    -v "$repo_dir":/root/cogview:"${REPO_MODE:-rw}" -v "$KEY_DIR":/root/.cogview-keys \
    "$@" "$IMAGE" \
    bash -c "ssh-keygen -A && /usr/sbin/sshd && python3 /root/cogview/env/setup_connection.py \
             --key-dir /root/.cogview-keys --slots $SLOTS --hostfile $HOSTFILE $ips && exec sleep infinity" >/dev/null
# ready once setup_connection.py wrote the container's ssh config (sshd runs by then); a
# container that stopped shows its log
ready=(grep -q "cogview nodes" /root/.ssh/config)
for _ in $(seq 60); do
    docker exec "$NAME" "${ready[@]}" 2>/dev/null && break
    if [ "$(docker inspect --format '{{.State.Running}}' "$NAME")" != true ]; then
        docker logs "$NAME" >&2
        echo "error: container $NAME stopped while starting (its log is above)" >&2
        exit 1
    fi
    sleep 0.5
done
docker exec "$NAME" "${ready[@]}" || { echo "error: $NAME did not set up ssh within 30 s (docker logs $NAME)" >&2; exit 1; }
echo "started $NAME; enter it with: docker exec -it $NAME bash"
