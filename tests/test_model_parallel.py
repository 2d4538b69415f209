"""Model parallelism: 2 processes on gloo equal one process; checkpoint split/merge."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from arch import (
    GPT2Model,
    load_checkpoint_state,
    merge_model_parallel_states,
    save_checkpoint,
    split_model_parallel_state,
)
from arch.change_mp import main as change_mp_main

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.mark.slow
def test_two_process_model_parallel_equals_single_process():
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        os.path.join(HERE, "mp_worker.py"),
    ]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.count("equal") == 2, result.stdout


def tiny_state():
    torch.manual_seed(0)
    return GPT2Model(3, 128, 32, 4, 0, 0, 0, 16, 0, False).state_dict()


@pytest.mark.parametrize("world", [2, 4])
def test_split_then_merge_is_identity(world):
    state = tiny_state()
    parts = split_model_parallel_state(state, world)
    h = 32
    assert parts[0]["transformer.layers.0.attention.query_key_value.weight"].shape == (3 * h // world, h)
    assert parts[0]["transformer.layers.0.attention.dense.weight"].shape == (h, h // world)
    assert parts[0]["transformer.layers.0.mlp.dense_4h_to_h.weight"].shape == (h, 4 * h // world)
    assert parts[0]["word_embeddings.weight"].shape == (128 // world, h)
    # stride-3 qkv: rank r holds [Q_r; K_r; V_r]
    qkv = state["transformer.layers.0.attention.query_key_value.weight"]
    q, k, v = qkv.chunk(3)
    r = world - 1
    expected = torch.cat([q.chunk(world)[r], k.chunk(world)[r], v.chunk(world)[r]])
    assert torch.equal(parts[r]["transformer.layers.0.attention.query_key_value.weight"], expected)
    merged = merge_model_parallel_states(parts)
    assert merged.keys() == state.keys()
    for key in state:
        assert torch.equal(merged[key], state[key]), key


def test_change_mp_cli_round_trip(tmp_path):
    state = tiny_state()
    save_checkpoint(str(tmp_path / "mp1"), 7, state)
    assert change_mp_main([str(tmp_path / "mp1"), str(tmp_path / "mp2"), "--model-parallel-size", "2"]) == 0
    assert (tmp_path / "mp2" / "7" / "mp_rank_01_model_states.pt").is_file()
    assert (tmp_path / "mp2" / "latest_checkpointed_iteration.txt").read_text() == "7"
    assert change_mp_main([str(tmp_path / "mp2"), str(tmp_path / "back"), "--model-parallel-size", "1"]) == 0
    back = load_checkpoint_state(str(tmp_path / "back"))
    for key in state:
        assert torch.equal(back[key], state[key]), key
    assert change_mp_main([str(tmp_path / "nothing"), str(tmp_path / "x"), "--model-parallel-size", "2"]) == 1
