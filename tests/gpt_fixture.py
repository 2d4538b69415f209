"""Build the fixture GPT from its config and checkpoint (shared by several tests)."""

from __future__ import annotations

import numpy as np
import torch

from arch import GPT2Model, load_checkpoint_state

from .conftest import fixture_path, load_fixture_json


def fixture_config() -> dict:
    return load_fixture_json("gpt", "config.json")


def build_fixture_model(max_memory_length=None, **overrides) -> GPT2Model:
    cfg = fixture_config()
    kwargs = dict(
        num_layers=cfg["num_layers"],
        vocab_size=cfg["vocab_size"],
        hidden_size=cfg["hidden_size"],
        num_attention_heads=cfg["num_attention_heads"],
        embedding_dropout_prob=cfg["hidden_dropout"],
        attention_dropout_prob=cfg["attention_dropout"],
        output_dropout_prob=cfg["hidden_dropout"],
        max_sequence_length=cfg["max_position_embeddings"],
        max_memory_length=cfg["max_memory_length"] if max_memory_length is None else max_memory_length,
        checkpoint_activations=False,
        checkpoint_num_layers=1,
        parallel_output=True,
        query_window=cfg["query_window"],
        key_window_times=cfg["key_window_times"],
        num_pivot=cfg["num_pivot"],
    )
    kwargs.update(overrides)
    model = GPT2Model(**kwargs)
    model.load_state_dict(load_checkpoint_state(fixture_path("gpt", "checkpoint")), strict=True)
    return model.eval()


def fixture_inputs():
    return {k: torch.from_numpy(v) if v.ndim else v for k, v in np.load(fixture_path("gpt", "inputs.npz")).items()}


def fixture_expected():
    return {k: torch.from_numpy(v) for k, v in np.load(fixture_path("gpt", "expected.npz")).items()}
