"""Several processes on gloo: DDP, DeepSpeed ZeRO-2, model parallelism and a two-node
torchrun launch on 127.0.0.1, each against the single-process run with the same global batch."""

from __future__ import annotations

import glob
import json
import os
import shutil
import socket
import subprocess
import sys

import pytest
import torch

from arch import merge_model_parallel_states
from arch.checkpoint import load_checkpoint_state

from .training_data import tiny_flags, tiny_setup

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "train_worker.py")
STEPS = 6
GLOBAL_BATCH = 4
# rows cut to 16 tokens (no padding): every rank's loss has the same denominator, so the
# mean of the per-rank losses equals the single-process loss of the whole batch
COMMON = {
    "--max-position-embeddings": 17,
    "--hidden-dropout": 0,
    "--attention-dropout": 0,
    "--train-iters": STEPS,
    "--save-interval": STEPS,
    "--lr-decay-style": "linear",
    "--lr": 1e-3,
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env() -> dict:
    e = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        e.pop(key, None)
    return e


def torchrun(args, out: str, nproc: int = 2, extra=()):
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={nproc}",
        f"--master_port={free_port()}",
        *extra,
        WORKER,
        *args,
    ]
    proc = subprocess.run(cmd, env={**env(), "TRAIN_WORKER_OUT": out}, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, (proc.stdout[-1500:], proc.stderr[-3000:])
    with open(out) as f:
        return json.load(f)


def run_dir(save: str) -> str:
    return glob.glob(os.path.join(save, "tiny-*"))[0]


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """The single-process reference: global batch 4 in one process."""
    import pretrain_gpt2

    folder = str(tmp_path_factory.mktemp("dist"))
    setup = tiny_setup(folder)
    save = os.path.join(folder, "single")
    result = pretrain_gpt2.run(tiny_flags(setup, save, **COMMON, **{"--batch-size": GLOBAL_BATCH}))
    return setup, folder, result.state.losses, run_dir(save)


@pytest.mark.slow
def test_ddp_two_processes_equals_single_process(single):
    setup, folder, losses, _ = single
    save = os.path.join(folder, "ddp")
    out = torchrun(
        tiny_flags(setup, save, **COMMON, **{"--batch-size": GLOBAL_BATCH // 2}), os.path.join(folder, "ddp.json")
    )
    assert out["dp_world"] == 2 and out["replicas_identical"], out
    assert out["losses"] == pytest.approx(losses, abs=1e-5)
    single_state = load_checkpoint_state(single[3])
    for key, value in load_checkpoint_state(run_dir(save)).items():
        torch.testing.assert_close(value, single_state[key], atol=1e-5, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_deepspeed_zero2_two_processes(single, dtype):
    setup, folder, losses, _ = single
    config = os.path.join(folder, f"zero2_{dtype}.json")
    with open(config, "w") as f:
        json.dump(
            {
                "train_micro_batch_size_per_gpu": GLOBAL_BATCH // 2,
                "gradient_accumulation_steps": 1,
                "gradient_clipping": 1.0,
                "zero_optimization": {"stage": 2},
                "bf16": {"enabled": dtype == "bf16"},
                "steps_per_print": 10**6,
            },
            f,
        )
    save = os.path.join(folder, f"ds_{dtype}")
    flags = tiny_flags(
        setup,
        save,
        **{
            **COMMON,
            "--deepspeed": True,
            "--deepspeed_config": config,
            "--save-interval": STEPS // 2,
            "--resume-dataloader": True,
        },
    )
    out = torchrun(flags, os.path.join(folder, f"ds_{dtype}.json"))
    assert out["dp_world"] == 2 and out["replicas_identical"], out
    if dtype == "fp32":
        assert out["losses"] == pytest.approx(losses, abs=1e-5)
        # resume from the middle checkpoint (engine + ZeRO shards + our client state): same curve
        half = os.path.join(folder, "ds_resume", "run")
        shutil.copytree(run_dir(save), half)
        shutil.rmtree(os.path.join(half, str(STEPS)))
        with open(os.path.join(half, "latest_checkpointed_iteration.txt"), "w") as f:
            f.write(str(STEPS // 2))
        resumed = torchrun(
            flags + ["--load", half, "--save", os.path.dirname(half)], os.path.join(folder, "ds_resume.json")
        )
        assert resumed["losses"] == out["losses"][STEPS // 2 :]
    else:  # bf16 weights: same curve to bf16 precision
        assert out["losses"] == pytest.approx(losses, abs=5e-2)
    state = load_checkpoint_state(run_dir(save))  # DeepSpeed's file, read weights-only
    assert state["word_embeddings.weight"].dtype == (torch.bfloat16 if dtype == "bf16" else torch.float32)


@pytest.mark.slow
def test_model_parallel_two_equals_single_process(single):
    setup, folder, losses, single_dir = single
    save = os.path.join(folder, "mp2")
    out = torchrun(
        tiny_flags(setup, save, **COMMON, **{"--batch-size": GLOBAL_BATCH, "--model-parallel-size": 2}),
        os.path.join(folder, "mp2.json"),
    )
    assert out["dp_world"] == 1
    assert out["losses"] == pytest.approx(losses, abs=1e-5)
    d = run_dir(save)
    merged = merge_model_parallel_states([load_checkpoint_state(d, mp_rank=r) for r in range(2)])
    reference = load_checkpoint_state(single_dir)
    assert set(merged) == set(reference)
    # lr 1e-3: Adam turns rounding noise in near-zero gradients (e.g. the key bias, which
    # softmax ignores) into lr-sized steps, so a large lr would drown 1e-5 in that noise
    for key, value in reference.items():
        torch.testing.assert_close(merged[key], value, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_two_node_torchrun_on_localhost(single):
    """Two `torchrun --nnodes 2 --node_rank R` launches (one process each) train and save."""
    setup, folder, losses, _ = single
    save = os.path.join(folder, "twonode")
    port = free_port()
    flags = tiny_flags(setup, save, **COMMON, **{"--batch-size": GLOBAL_BATCH // 2})
    procs = []
    for node in range(2):
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nnodes=2",
            f"--node_rank={node}",
            "--nproc_per_node=1",
            "--master_addr=127.0.0.1",
            f"--master_port={port}",
            WORKER,
            *flags,
        ]
        procs.append(
            subprocess.Popen(
                cmd,
                env={**env(), "TRAIN_WORKER_OUT": os.path.join(folder, "2n.json")},
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    outputs = [p.communicate(timeout=400)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
    with open(os.path.join(folder, "2n.json")) as f:
        out = json.load(f)
    assert out["dp_world"] == 2 and out["replicas_identical"]
    assert out["losses"] == pytest.approx(losses, abs=1e-5)
    d = run_dir(save)
    with open(os.path.join(d, "latest_checkpointed_iteration.txt")) as f:
        assert f.read() == str(STEPS)


@pytest.mark.slow
def test_deepspeed_with_model_parallel_two(single):
    """DeepSpeed ZeRO-1 with --model-parallel-size 2: the mp-aware grad norm (split parameters
    flagged for DeepSpeed) keeps the curve on the single-process one."""
    setup, folder, losses, _ = single
    config = os.path.join(folder, "zero1_mp.json")
    with open(config, "w") as f:
        json.dump(
            {
                "train_micro_batch_size_per_gpu": GLOBAL_BATCH,
                "gradient_clipping": 1.0,
                "zero_optimization": {"stage": 1},
                "steps_per_print": 10**6,
            },
            f,
        )
    save = os.path.join(folder, "ds_mp2")
    out = torchrun(
        tiny_flags(
            setup, save, **COMMON, **{"--deepspeed": True, "--deepspeed_config": config, "--model-parallel-size": 2}
        ),
        os.path.join(folder, "ds_mp2.json"),
    )
    assert out["dp_world"] == 1
    assert out["losses"] == pytest.approx(losses, abs=1e-5)
    d = run_dir(save)
    assert sorted(os.listdir(os.path.join(d, str(STEPS))))[:2] == [
        "mp_rank_00_model_states.pt",
        "mp_rank_01_model_states.pt",
    ]


def test_lost_peer_reason_names_the_transport_error(monkeypatch):
    """A collective that failed because a rank is gone (gloo's connection errors, torch's
    DistError) gives the transport's words; any other error, or one process, gives None."""
    from training import distributed

    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(distributed.dist, "get_world_size", lambda group=None: 2)
    gloo = RuntimeError(
        "[/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:537] Read error [172.18.0.11]:11905: "
        "Connection reset by peer. This is typically caused by a remote worker hanging\nmore"
    )
    assert distributed.lost_peer_reason(gloo) == "Read error [172.18.0.11]:11905: Connection reset by peer"
    assert distributed.lost_peer_reason(distributed.dist.DistNetworkError("store closed")) == "store closed"
    assert distributed.lost_peer_reason(RuntimeError("mat1 and mat2 shapes cannot be multiplied")) is None
    monkeypatch.setattr(distributed.dist, "get_world_size", lambda group=None: 1)
    assert distributed.lost_peer_reason(gloo) is None
