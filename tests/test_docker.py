"""The docker image and multi-node training for real, with the commands the README gives.

``env/build_image.sh --cpu`` builds the image (its Debian base made with debootstrap, the
wheels with the host's pip; docker keeps it, so later runs only check its inputs); docker.io,
debootstrap and dockerd are installed and started when missing. Then: text2image in a
container writes the host's images; two containers from ``env/start_docker.sh`` on an internal
network of the test's own train the tiny model through ``scripts/pretrain_multiple_nodes.sh``
(``deepspeed --hostfile`` over pdsh/ssh) with the single process's losses; a node killed
mid-run stops the job with one line on the other, and two fresh containers resume from the
last checkpoint to the uninterrupted run's bits. Containers and the network are removed.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import subprocess
import sys
import time
from typing import Dict, List

import numpy as np
import pytest
import torch
from PIL import Image

from .training_data import tiny_flags, tiny_setup

pytestmark = [pytest.mark.docker, pytest.mark.slow]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGE = "cogview/cpu_torch_deepspeed:base"
STEPS = 40  # the two-node curve stays within 1e-6 of one process this long (lr 1e-3)
SAVE_EVERY = 10  # the run that loses a node saves here, and is killed two steps after
GLOBAL_BATCH = 4
TAG = f"cogview-test-{os.getpid()}"
LOSS_LINE = re.compile(r" iteration +(\d+)/ +\d+ \|.*?lm loss (\S+) \|")


def sh(cmd: List[str], timeout: float = 600, check: bool = True, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} exited with {proc.returncode}:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}"
        )
    return proc


def losses(output: str) -> Dict[int, str]:
    """iteration -> the loss as printed (9 significant digits: a float32 is told apart)."""
    return {int(m.group(1)): m.group(2) for m in LOSS_LINE.finditer(output)}


def docker_works() -> bool:
    return shutil.which("docker") is not None and sh(["docker", "info"], check=False, timeout=60).returncode == 0


@pytest.fixture(scope="module")
def docker(tmp_path_factory):
    """docker.io and debootstrap installed, dockerd answering (started here when it is not,
    and stopped afterwards)."""
    if os.geteuid() != 0:
        message = "the docker tests install and start docker.io and need root"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    if not (shutil.which("dockerd") and shutil.which("debootstrap")):
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        install = ["apt-get", "install", "-y", "-q", "docker.io", "debootstrap"]
        if sh(install, check=False, env=env).returncode != 0:
            sh(["apt-get", "update", "-q"], env=env)
            sh(install, env=env)
    daemon = None
    if not docker_works():
        log_path = tmp_path_factory.mktemp("dockerd") / "dockerd.log"
        with open(log_path, "w") as log:
            daemon = subprocess.Popen(["dockerd"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 60
        while not docker_works():
            assert daemon.poll() is None and time.time() < deadline, f"dockerd did not start: see {log_path}"
            time.sleep(1)
    yield
    if daemon is not None:
        daemon.terminate()
        daemon.wait(timeout=60)


@pytest.fixture(scope="module")
def image(docker):
    """The CPU image, built by the script the README names (skipped inside when up to date)."""
    start = time.time()
    proc = sh(["bash", os.path.join(ROOT, "env", "build_image.sh"), "--cpu"], timeout=1800, cwd=ROOT)
    print(f"env/build_image.sh --cpu: {time.time() - start:.0f} s ({proc.stdout.strip().splitlines()[-1]})")
    return IMAGE


def read_images(folder: str) -> Dict[str, np.ndarray]:
    found = {}
    for dirpath, _, files in os.walk(folder):
        for name in files:
            if name.endswith((".png", ".jpg")):
                path = os.path.join(dirpath, name)
                found[os.path.relpath(path, folder)] = np.asarray(Image.open(path).convert("RGB"))
    return found


def test_text2image_in_a_container_writes_the_host_images(image, tmp_path):
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("a large blue star in the center on a black background\n")
    env = {"INPUT_SOURCE": str(prompt), "BATCH_SIZE": "2", "OMP_NUM_THREADS": "1"}
    host = sh(
        ["./scripts/text2image.sh", "--seed", "7"],
        cwd=ROOT,
        env={**os.environ, **env, "OUTPUT_PATH": str(tmp_path / "host")},
    )
    env_args = [a for k, v in env.items() for a in ("-e", f"{k}={v}")]
    sh(
        ["docker", "run", "--rm", "--network", "none", "-v", f"{ROOT}:/root/cogview:ro",
         "-v", f"{tmp_path}:{tmp_path}", *env_args, "-e", f"OUTPUT_PATH={tmp_path}/container",
         image, "./scripts/text2image.sh", "--seed", "7"]
    )  # fmt: skip
    on_host, in_container = read_images(str(tmp_path / "host")), read_images(str(tmp_path / "container"))
    assert len(on_host) == 3, host.stderr[-2000:]  # two samples and their grid
    assert sorted(in_container) == sorted(on_host)
    for name, pixels in on_host.items():
        assert np.array_equal(in_container[name], pixels), f"{name} differs between the host and the container"


class Cluster:
    """Two nodes on an internal docker network of the test's own, started by env/start_docker.sh."""

    def __init__(self, image: str, work: str):
        self.image, self.work = image, work
        self.network = f"{TAG}-net"
        self.names = [f"{TAG}-node{i}" for i in range(2)]
        # docker picks a free subnet; it is made again with that subnet so nodes get fixed IPs
        sh(["docker", "network", "create", "--internal", self.network])
        subnet = json.loads(sh(["docker", "network", "inspect", self.network]).stdout)[0]["IPAM"]["Config"][0]
        sh(["docker", "network", "rm", self.network])
        sh(["docker", "network", "create", "--internal", "--subnet", subnet["Subnet"], self.network])
        net = ipaddress.ip_network(subnet["Subnet"])
        self.ips = [str(net.network_address + 10 + i) for i in range(2)]
        self.ip_list = os.path.join(work, "ip_list.txt")
        with open(self.ip_list, "w") as f:
            f.write(" ".join(self.ips) + "\n")
        self.hostfile = os.path.join(work, "hostfile")

    def start(self) -> None:
        for i, (name, ip) in enumerate(zip(self.names, self.ips)):
            env = dict(
                os.environ,
                IMAGE=self.image,
                NAME=name,
                NETWORK=self.network,
                IP=ip,
                IP_LIST=self.ip_list,
                KEY_DIR=os.path.join(self.work, "keys"),
                HOSTFILE=self.hostfile,
                REPO_MODE="ro",
                SHM_SIZE="1g",
            )
            cpus = ["--cpuset-cpus", str(i)] if (os.cpu_count() or 1) >= 2 else []  # a core per node
            sh(["bash", os.path.join(ROOT, "env", "start_docker.sh"), "-v", f"{self.work}:{self.work}", *cpus], env=env)

    def remove_nodes(self) -> None:
        sh(["docker", "rm", "-f", *self.names], check=False)

    def close(self) -> None:
        self.remove_nodes()
        sh(["docker", "network", "rm", self.network], check=False)

    def train_command(self, flags: List[str]) -> List[str]:
        """The README's hostfile launch, on node 0."""
        return ["docker", "exec", "-w", "/root/cogview", "-e", "PRECISION=fp32", "-e",
                f"HOST_FILE_PATH={self.hostfile}", self.names[0],
                "bash", "scripts/pretrain_multiple_nodes.sh", *flags]  # fmt: skip


@pytest.fixture(scope="module")
def cluster(image, tmp_path_factory):
    work = str(tmp_path_factory.mktemp("nodes"))
    nodes = Cluster(image, work)
    try:
        nodes.start()
        yield nodes
    finally:
        nodes.close()
        assert not sh(["docker", "ps", "-aq", "--filter", f"name={TAG}"]).stdout.strip()


def run_flags(setup: dict, save: str, config: str, **extra) -> List[str]:
    """Tiny flags on top of the script's recipe (the recipe's name, device and memory length kept)."""
    return tiny_flags(
        setup,
        save,
        **{
            "--experiment-name": None,
            "--device": None,
            "--max-memory-length": None,
            "--max-position-embeddings": 17,  # rows of 16 tokens, no padding: rank means = batch mean
            "--hidden-dropout": 0,
            "--attention-dropout": 0,
            "--lr": 1e-3,
            "--lr-decay-style": "linear",
            "--train-iters": STEPS,
            "--save-interval": STEPS,
            "--batch-size": GLOBAL_BATCH // 2,
            "--deepspeed_config": config,
            **extra,
        },
    )


@pytest.fixture(scope="module")
def two_node_run(cluster):
    """The uninterrupted hostfile run and the single-process reference."""
    work = cluster.work
    setup = tiny_setup(work)
    config = os.path.join(work, "zero1_fp32.json")
    with open(config, "w") as f:  # the original's ZeRO-1 json, in fp32
        json.dump({"zero_optimization": {"stage": 1}, "fp16": {"enabled": False}, "steps_per_print": 10**6}, f)
    single = sh(
        [sys.executable, os.path.join(ROOT, "pretrain_gpt2.py"), "--device", "cpu",
         *tiny_flags(setup, os.path.join(work, "single"), **{
             "--max-position-embeddings": 17, "--hidden-dropout": 0, "--attention-dropout": 0, "--lr": 1e-3,
             "--lr-decay-style": "linear", "--train-iters": STEPS, "--save-interval": STEPS,
             "--batch-size": GLOBAL_BATCH})],
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )  # fmt: skip
    start = time.time()
    proc = sh(cluster.train_command(run_flags(setup, os.path.join(work, "full"), config)), timeout=600)
    print(f"two-node hostfile run of {STEPS} steps: {time.time() - start:.0f} s")
    return setup, config, single.stdout, proc.stdout + proc.stderr


def run_folder(save: str) -> str:
    (folder,) = [os.path.join(save, d) for d in os.listdir(save) if d.startswith("cogview-ali_fashion")]
    return folder


def test_hostfile_training_on_two_containers_equals_one_process(cluster, two_node_run):
    _, _, single, output = two_node_run
    assert "Running on the following workers: node0,node1" in output  # DeepSpeed's pdsh runner
    assert "world size 2" in output
    two, one = losses(output), losses(single)
    assert sorted(two) == list(range(1, STEPS + 1)) and sorted(one) == sorted(two)
    for it in two:
        assert float(two[it]) == pytest.approx(float(one[it]), abs=1e-5), f"iteration {it}"
    # saved once, in the original's layout: <save>/<experiment>/<iteration>/mp_rank_00_model_states.pt
    folder = run_folder(os.path.join(cluster.work, "full"))
    assert open(os.path.join(folder, "latest_checkpointed_iteration.txt")).read() == str(STEPS)
    assert sorted(d for d in os.listdir(folder) if d.isdigit()) == [str(STEPS)]
    assert os.path.isfile(os.path.join(folder, str(STEPS), "mp_rank_00_model_states.pt"))
    # nothing published on the host: the nodes' sshd listens on the test's own network only
    for name in cluster.names:
        ports = json.loads(sh(["docker", "inspect", name]).stdout)[0]["NetworkSettings"]["Ports"] or {}
        assert all(not bindings for bindings in ports.values()), ports
    assert json.loads(sh(["docker", "network", "inspect", cluster.network]).stdout)[0]["Internal"] is True


def test_node_killed_stops_the_job_and_fresh_nodes_resume_bitwise(cluster, two_node_run):
    setup, config, _, full_output = two_node_run
    save = os.path.join(cluster.work, "killed")
    kill_at = SAVE_EVERY + 2
    proc = subprocess.Popen(
        cluster.train_command(run_flags(setup, save, config, **{"--save-interval": SAVE_EVERY})),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    seen: List[str] = []
    for line in proc.stdout:
        seen.append(line)
        if "starting at iteration 0" in line:
            # node 1 slowed to 5% of a core: the kill below lands long before the last step
            sh(["docker", "update", "--cpus", "0.05", cluster.names[1]])
        if f" iteration {kill_at:8d}/" in line:
            sh(["docker", "kill", cluster.names[1]])
    proc.wait(timeout=120)
    output = "".join(seen)
    assert proc.returncode != 0, output[-3000:]
    reached = max(losses(output))
    assert kill_at <= reached < STEPS, output[-3000:]
    folder = run_folder(save)
    saved = int(open(os.path.join(folder, "latest_checkpointed_iteration.txt")).read())
    assert SAVE_EVERY <= saved <= reached and saved % SAVE_EVERY == 0
    message = re.search(r"node0: (error: lost the connection to another training process .*)", output)
    assert message, output[-3000:]
    print(message.group(1))
    assert f"the checkpoint of iteration {saved} is in {folder} (resume: --load {folder})" in message.group(1)

    cluster.remove_nodes()  # two fresh containers resume
    cluster.start()
    resumed = sh(
        cluster.train_command(run_flags(setup, save, config, **{"--save-interval": SAVE_EVERY, "--load": folder}))
    )
    after, full = losses(resumed.stdout), losses(full_output)
    assert sorted(after) == list(range(saved + 1, STEPS + 1))
    assert after == {it: full[it] for it in after}
    a = torch.load(os.path.join(run_folder(os.path.join(cluster.work, "full")), str(STEPS), "mp_rank_00_model_states.pt"),
                   weights_only=True)  # fmt: skip
    b = torch.load(os.path.join(folder, str(STEPS), "mp_rank_00_model_states.pt"), weights_only=True)
    for key, value in a["module"].items():
        assert torch.equal(value, b["module"][key]), f"{key} differs from the uninterrupted run"
    assert a["iteration"] == b["iteration"] == STEPS
    for rank in range(2):  # and each node's ZeRO shard of the optimizer (DeepSpeed pickles a
        # LossScaler in it: full unpickling, of files this test just wrote)
        name = os.path.join(str(STEPS), f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt")
        shard_a = torch.load(os.path.join(run_folder(os.path.join(cluster.work, "full")), name), weights_only=False)
        shard_b = torch.load(os.path.join(folder, name), weights_only=False)
        assert_same(shard_a["optimizer_state_dict"], shard_b["optimizer_state_dict"], name)


def assert_same(a, b, path: str) -> None:
    """Equal to the bit, through dicts, lists, objects' attributes and tensors."""
    if isinstance(a, dict):
        assert set(a) == set(b), path
        for key in a:
            assert_same(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}[{i}]")
    elif torch.is_tensor(a):
        assert torch.equal(a, b), f"{path} differs from the uninterrupted run"
    elif hasattr(a, "__dict__") and type(a) is type(b):  # DeepSpeed's objects (its loss scaler)
        assert_same(vars(a), vars(b), path)
    else:
        assert a == b, f"{path}: {a} != {b}"
