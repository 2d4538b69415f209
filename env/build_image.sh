#!/usr/bin/env bash
# Build the CogView image from env/dockerfile, on a GPU host or a machine without one.
#
#   bash env/build_image.sh          # nvidia-smi found: --gpu, else --cpu
#   bash env/build_image.sh --gpu    # CUDA base from the registry -> cogview/cuda_torch_deepspeed:base
#   bash env/build_image.sh --cpu    # Debian bookworm base        -> cogview/cpu_torch_deepspeed:base
#
# --cpu needs no image registry: the base (cogview/debian:bookworm-minbase) is made here with
# debootstrap from Debian's package archive when docker does not have it, and the wheels of
# requirements.txt (torch's CPU build included) are made with the host's pip into env/wheels/,
# so the build installs them without an index. An image whose inputs (dockerfile,
# requirements.txt, base image, build arguments) are unchanged is not built again.
# Variables: BASE_IMAGE, TAG, PYTHON (the host's Python 3.11, for the wheels),
# DEBIAN_MIRROR (for debootstrap; its default otherwise), PIP_EXTRA_INDEX_URL (e.g. PyTorch's
# CPU wheel index, where the host's pip has no CPU build of torch).
set -euo pipefail
repo_dir="$(dirname "$(dirname "$(realpath "$0")")")"
cd "$repo_dir"

mode=auto
case "${1:-}" in
    --cpu) mode=cpu ;;
    --gpu) mode=gpu ;;
    "") ;;
    *) echo "error: unknown option '$1'; use --cpu, --gpu or nothing (GPU when nvidia-smi is found)" >&2; exit 2 ;;
esac
if [ "$mode" = auto ]; then
    if command -v nvidia-smi >/dev/null 2>&1; then mode=gpu; else mode=cpu; fi
fi
command -v docker >/dev/null 2>&1 || { echo "error: docker not found; install it (Debian: apt-get install docker.io)" >&2; exit 1; }
docker info >/dev/null 2>&1 || { echo "error: the docker daemon does not answer; start it (dockerd, or systemctl start docker)" >&2; exit 1; }

PYTHON=${PYTHON:-python3}
LOCAL_BASE=cogview/debian:bookworm-minbase
build_args=()
if [ "$mode" = gpu ]; then
    BASE_IMAGE=${BASE_IMAGE:-nvidia/cuda:12.4.1-cudnn-devel-ubuntu22.04}
    TAG=${TAG:-cogview/cuda_torch_deepspeed:base}
else
    BASE_IMAGE=${BASE_IMAGE:-$LOCAL_BASE}
    TAG=${TAG:-cogview/cpu_torch_deepspeed:base}
    build_args+=(--build-arg "DEV_PACKAGES=")  # no CUDA ops to compile
fi

# make_local_base: Debian bookworm (minbase) with debootstrap, imported as $LOCAL_BASE
make_local_base() {
    command -v debootstrap >/dev/null 2>&1 \
        || { echo "error: $LOCAL_BASE is missing and debootstrap is not installed; apt-get install debootstrap" >&2; exit 1; }
    local root
    root=$(mktemp -d)
    trap 'rm -rf "$root"' EXIT
    echo "making $LOCAL_BASE with debootstrap (Debian bookworm, minbase)" >&2
    debootstrap --variant=minbase bookworm "$root/rootfs" ${DEBIAN_MIRROR:+"$DEBIAN_MIRROR"} >"$root/log" 2>&1 \
        || { tail -5 "$root/log" >&2; echo "error: debootstrap failed (log above)" >&2; exit 1; }
    tar -C "$root/rootfs" -c . | docker import -c 'CMD ["bash"]' - "$LOCAL_BASE" >/dev/null
    rm -rf "$root"
    trap - EXIT
}

if ! docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    if [ "$BASE_IMAGE" = "$LOCAL_BASE" ]; then
        make_local_base
    elif ! docker pull "$BASE_IMAGE"; then
        echo "error: base image $BASE_IMAGE could not be pulled; on a machine without a GPU or registry use --cpu" >&2
        exit 1
    fi
fi

# skip the build when an image of these inputs exists (the label holds their hash)
base_id=$(docker image inspect --format '{{.Id}}' "$BASE_IMAGE")
inputs=$( { cat env/dockerfile requirements.txt .dockerignore; echo "$base_id ${build_args[*]:-} $mode"; } | sha256sum | cut -c1-16)
if [ "$(docker image inspect --format '{{ index .Config.Labels "org.cogview.inputs" }}' "$TAG" 2>/dev/null)" = "$inputs" ]; then
    echo "$TAG is up to date (inputs $inputs)"
    exit 0
fi

if [ "$mode" = cpu ]; then
    # the wheelhouse, made again only when requirements.txt changed
    want=$(sha256sum requirements.txt | cut -c1-16)
    if [ "$(cat env/wheels/.requirements 2>/dev/null)" != "$want" ]; then
        version=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
        if [ "$version" != 3.11 ]; then
            echo "error: the image runs Python 3.11 but $PYTHON is $version; set PYTHON to a Python 3.11 to make its wheels" >&2
            exit 1
        fi
        echo "making the wheels of requirements.txt in env/wheels/ with $PYTHON -m pip wheel" >&2
        rm -f env/wheels/*.whl env/wheels/.requirements
        "$PYTHON" -m pip wheel -q -r requirements.txt -w env/wheels
        echo "$want" > env/wheels/.requirements
    fi
fi

echo "building $TAG from $BASE_IMAGE" >&2
DOCKER_BUILDKIT=${DOCKER_BUILDKIT:-0} docker build -f env/dockerfile -t "$TAG" \
    --build-arg "BASE_IMAGE=$BASE_IMAGE" "${build_args[@]}" --label "org.cogview.inputs=$inputs" .
echo "built $TAG"
