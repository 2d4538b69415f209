"""Launch scripts, DeepSpeed configs and env/ files: syntax, spec values, and CPU runs."""

from __future__ import annotations

import glob
import json
import os
import py_compile
import shutil
import socket
import subprocess
import sys

import pytest

from .training_data import tiny_flags, tiny_setup

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHELL_FILES = [
    "scripts/pretrain_single_node.sh",
    "scripts/pretrain_multiple_nodes.sh",
    "scripts/training_common.sh",
    "env/start_docker.sh",
    "env/build_image.sh",
]


@pytest.mark.parametrize("path", SHELL_FILES)
def test_shell_syntax(path):
    assert subprocess.run(["bash", "-n", os.path.join(ROOT, path)]).returncode == 0


def test_python_env_files_compile(tmp_path):
    py_compile.compile(os.path.join(ROOT, "env", "setup_connection.py"), cfile=str(tmp_path / "x.pyc"), doraise=True)
    for name in ("dockerfile", "ip_list.txt.example"):
        assert os.path.isfile(os.path.join(ROOT, "env", name))
    docker = open(os.path.join(ROOT, "env", "dockerfile")).read()
    # the CUDA image stays the default base; a CPU base comes in as BASE_IMAGE
    assert "ARG BASE_IMAGE=nvidia/cuda" in docker and "FROM ${BASE_IMAGE}" in docker
    assert "requirements.txt" in docker and "pdsh" in docker and "openssh-server" in docker


def test_setup_connection_writes_hostfile_and_ssh_config(tmp_path):
    hostfile, ssh = tmp_path / "hostfile", tmp_path / "ssh" / "config"
    cmd = [
        sys.executable,
        os.path.join(ROOT, "env", "setup_connection.py"),
        "10.0.0.1",
        "10.0.0.2",
        "--hostfile",
        str(hostfile),
        "--ssh-config",
        str(ssh),
    ]
    assert subprocess.run(cmd, capture_output=True).returncode == 0
    assert hostfile.read_text() == "node0 slots=8\nnode1 slots=8\n"
    assert "HostName 10.0.0.2" in ssh.read_text() and "Port 2222" in ssh.read_text()
    bad = subprocess.run(cmd[:2] + ["not-an-ip"], capture_output=True, text=True)
    assert bad.returncode == 2 and "not an IP" in bad.stderr


@pytest.mark.skipif(not shutil.which("ssh-keygen"), reason="ssh-keygen (openssh-client) is not installed")
def test_setup_connection_installs_one_cluster_key(tmp_path):
    """Two nodes given the same --key-dir get the same identity, trusted once by each."""
    keys = tmp_path / "keys"
    for node in ("a", "b"):
        ssh = tmp_path / node / "config"
        cmd = [sys.executable, os.path.join(ROOT, "env", "setup_connection.py"), "10.0.0.1", "--key-dir", str(keys)]
        for _ in range(2):  # a second run changes nothing
            proc = subprocess.run(cmd + ["--hostfile", str(tmp_path / "hostfile"), "--ssh-config", str(ssh)])
            assert proc.returncode == 0
        public = (keys / "id_ed25519.pub").read_text().strip()
        assert (tmp_path / node / "authorized_keys").read_text().splitlines() == [public]
        assert (tmp_path / node / "id_ed25519").read_bytes() == (keys / "id_ed25519").read_bytes()
        assert oct((tmp_path / node / "id_ed25519").stat().st_mode & 0o777) == "0o600"


def test_deepspeed_configs_hold_the_spec_values():
    plain = json.load(open(os.path.join(ROOT, "scripts", "ds_config.json")))
    assert plain["train_micro_batch_size_per_gpu"] == 12 and plain["gradient_clipping"] == 1.0
    assert plain["fp16"]["loss_scale_window"] == 1000 and plain["fp16"]["min_loss_scale"] == 0.01
    assert plain["optimizer"]["params"] == {"lr": 4e-4, "weight_decay": 0.01}
    zero = json.load(open(os.path.join(ROOT, "scripts", "ds_config_zero.json")))
    assert zero["train_micro_batch_size_per_gpu"] == 4 and zero["gradient_clipping"] == 0.1
    assert zero["zero_optimization"]["stage"] == 1 and zero["fp16"]["loss_scale_window"] == 400
    assert zero["optimizer"]["params"]["betas"] == [0.9, 0.95] and zero["optimizer"]["params"]["lr"] == 5e-5


def _script_env() -> dict:
    env = dict(os.environ, FORCE_CPU="1", OMP_NUM_THREADS="1", PYTHON=sys.executable)
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "NODE_RANK"):
        env.pop(key, None)
    return env


def _overrides(setup, save):
    """The recipe's flags made tiny (the scripts append extra arguments last)."""
    return tiny_flags(
        setup,
        save,
        **{
            "--train-iters": 2,
            "--batch-size": None,
            "--lr": None,
            "--warmup": None,
            "--lr-decay-style": None,
            "--seed": None,
            "--device": None,
            "--experiment-name": None,
            "--save-interval": None,
            "--max-memory-length": None,
        },
    )


@pytest.mark.slow
def test_single_node_script_trains_on_cpu(tmp_path):
    setup = tiny_setup(str(tmp_path))
    save = str(tmp_path / "ckpt")
    proc = subprocess.run(
        ["bash", os.path.join(ROOT, "scripts", "pretrain_single_node.sh"), *_overrides(setup, save)],
        env=_script_env(),
        cwd=str(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "training on CPU" in proc.stderr and "back end deepspeed" in proc.stdout
    (run,) = glob.glob(os.path.join(save, "cogview-bird_animal_tutorial-12-1024-16-*"))
    assert open(os.path.join(run, "latest_checkpointed_iteration.txt")).read() == "2"


@pytest.mark.slow
def test_multiple_nodes_script_two_nodes_on_localhost(tmp_path):
    """The hostfile-free path: the script run twice with NODE_RANK 0/1, MASTER_ADDR 127.0.0.1."""
    setup = tiny_setup(str(tmp_path))
    save = str(tmp_path / "ckpt")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [
        subprocess.Popen(
            ["bash", os.path.join(ROOT, "scripts", "pretrain_multiple_nodes.sh"), *_overrides(setup, save)],
            env={**_script_env(), "NODE_RANK": str(r), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)},
            cwd=str(tmp_path),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for r in range(2)
    ]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][-2000:] + outs[1][-2000:]
    assert "world size 2" in outs[0]
    (run,) = glob.glob(os.path.join(save, "cogview-ali_fashion_tutorial-12-1024-16-*"))
    assert open(os.path.join(run, "latest_checkpointed_iteration.txt")).read() == "2"
