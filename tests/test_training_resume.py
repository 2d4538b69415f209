"""Exact resume: a run SIGKILLed after a checkpoint, or stopped by SIGTERM (which saves where
it stops), and resumed ends bitwise equal (CPU, fp32, dropout on) to the same run left alone."""

from __future__ import annotations

import glob
import os
import random
import signal
import subprocess
import sys

import pytest
import torch

from .training_data import tiny_flags, tiny_setup

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N = 40


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("WORLD_SIZE", None)
    env.pop("RANK", None)
    return env


def _cmd(setup, save, **extra):
    flags = tiny_flags(
        setup,
        save,
        **{
            "--train-iters": N,
            "--save-interval": 10,
            "--resume-dataloader": True,
            "--lr-decay-style": "linear",
            **extra,
        },
    )
    return [sys.executable, os.path.join(ROOT, "pretrain_gpt2.py"), *flags]


def _final(run_dir: str) -> dict:
    return torch.load(os.path.join(run_dir, str(N), "mp_rank_00_model_states.pt"), weights_only=True)


def _assert_same(a, b, path="ckpt"):
    if isinstance(a, dict):
        assert set(a) == set(b), path
        for k in a:
            _assert_same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same(x, y, f"{path}[{i}]")
    elif torch.is_tensor(a):
        assert torch.equal(a, b), f"{path} differs (max diff {(a.double() - b.double()).abs().max()})"
    else:
        assert a == b, f"{path}: {a} != {b}"


@pytest.mark.slow
def test_sigkill_then_resume_is_bitwise_identical(tmp_path):
    setup = tiny_setup(str(tmp_path))
    full = subprocess.run(_cmd(setup, str(tmp_path / "full")), env=_env(), capture_output=True, text=True, timeout=300)
    assert full.returncode == 0, full.stderr[-2000:]

    kill_at = random.Random().randint(21, 25)  # after the checkpoint at 20
    proc = subprocess.Popen(
        _cmd(setup, str(tmp_path / "killed")), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if f" iteration {kill_at:8d}/" in line:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "".join(seen[-5:])
    run_dir = glob.glob(str(tmp_path / "killed" / "tiny-*"))[0]
    with open(os.path.join(run_dir, "latest_checkpointed_iteration.txt")) as f:
        assert int(f.read()) in (20, 30)
    resumed = subprocess.run(
        _cmd(setup, str(tmp_path / "killed"), **{"--load": run_dir}),
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a = _final(glob.glob(str(tmp_path / "full" / "tiny-*"))[0])
    b = _final(run_dir)
    for key in (
        "module",
        "optimizer",
        "lr_scheduler",
        "torch_rng_state",
        "rng_tracker_states",
        "data_position",
        "iteration",
    ):
        _assert_same(a[key], b[key], key)
    # and the lr is the scheduler's value at N
    assert a["optimizer"]["param_groups"][0]["lr"] == b["optimizer"]["param_groups"][0]["lr"]


@pytest.mark.slow
def test_sigkill_while_writing_a_checkpoint_keeps_the_previous_one(tmp_path):
    from arch import load_checkpoint_state

    setup = tiny_setup(str(tmp_path))
    worker = os.path.join(ROOT, "tests", "kill_in_save_worker.py")
    cmd = [sys.executable, worker, *_cmd(setup, str(tmp_path / "run"))[2:]]
    proc = subprocess.run(cmd, env={**_env(), "KILL_AT_SAVE": "2"}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    run_dir = glob.glob(str(tmp_path / "run" / "tiny-*"))[0]
    with open(os.path.join(run_dir, "latest_checkpointed_iteration.txt")) as f:
        assert f.read() == "10"  # the second save (20) died mid-write
    assert any(name.startswith(".tmp") for name in os.listdir(os.path.join(run_dir, "20")))
    state = load_checkpoint_state(run_dir)
    assert "word_embeddings.weight" in state
    resumed = subprocess.run(
        _cmd(setup, str(tmp_path / "run"), **{"--load": run_dir}),
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "starting at iteration 10" in resumed.stdout
    # saving iteration 20 again removed the half-written temporary file the kill left
    assert not any(name.startswith(".tmp") for name in os.listdir(os.path.join(run_dir, "20")))


@pytest.mark.slow
def test_sigterm_saves_where_it_stops_and_resume_is_bitwise_identical(tmp_path):
    setup = tiny_setup(str(tmp_path))
    full = subprocess.run(_cmd(setup, str(tmp_path / "full")), env=_env(), capture_output=True, text=True, timeout=300)
    assert full.returncode == 0, full.stderr[-2000:]

    kill_at = random.Random().choice([k for k in range(11, 30) if k % 10])  # between two interval saves
    proc = subprocess.Popen(
        _cmd(setup, str(tmp_path / "stopped")),
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if f" iteration {kill_at:8d}/" in line:
            proc.send_signal(signal.SIGTERM)
            break
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "Traceback" not in out + err
    (line,) = [x for x in err.splitlines() if "stopped by SIGTERM" in x]
    reached = int(line.split(" at iteration ")[1].split(":")[0])
    assert kill_at <= reached < N
    run_dir = glob.glob(str(tmp_path / "stopped" / "tiny-*"))[0]
    with open(os.path.join(run_dir, "latest_checkpointed_iteration.txt")) as f:
        assert int(f.read()) == reached
    stopped = torch.load(os.path.join(run_dir, str(reached), "mp_rank_00_model_states.pt"), weights_only=True)
    assert stopped["iteration"] == reached and stopped["data_position"] == reached
    resumed = subprocess.run(
        _cmd(setup, str(tmp_path / "stopped"), **{"--load": run_dir}),
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"starting at iteration {reached}" in resumed.stdout
    a = _final(glob.glob(str(tmp_path / "full" / "tiny-*"))[0])
    b = _final(run_dir)
    for key in (
        "module",
        "optimizer",
        "lr_scheduler",
        "random_rng_state",
        "np_rng_state",
        "torch_rng_state",
        "rng_tracker_states",
        "data_position",
        "iteration",
    ):
        _assert_same(a[key], b[key], key)
