"""GPT2Model: word embeddings, the CogView transformer and the tied output layer.

Constructor arguments, forward signature and state-dict keys are those of the
original ``model/gpt2_modeling.py``, so released checkpoints load strictly.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Tuple

import torch
from torch import nn

from . import mpu
from .config import GPT2Config
from .kv_cache import KVCache
from .transformer import GPT2ParallelTransformer, init_method_normal


class GPT2Model(nn.Module):
    """GPT-2 with Sandwich-LN and PB-relax; ``forward`` returns (logits, *mems)."""

    def __init__(
        self,
        num_layers: int,
        vocab_size: int,
        hidden_size: int,
        num_attention_heads: int,
        embedding_dropout_prob: float,
        attention_dropout_prob: float,
        output_dropout_prob: float,
        max_sequence_length: int,
        max_memory_length: int,
        checkpoint_activations: bool,
        checkpoint_num_layers: int = 1,
        parallel_output: bool = True,
        query_window: int = 128,
        key_window_times: int = 6,
        num_pivot: int = 768,
        *,
        pb_relax_attention: bool = False,
        pb_relax_alpha: float = 32.0,
    ):
        super().__init__()
        self.parallel_output = parallel_output
        self.num_layers = num_layers
        self.max_memory_length = max_memory_length
        self.word_embeddings = mpu.VocabParallelEmbedding(vocab_size, hidden_size, init_method=init_method_normal(0.02))
        self.transformer = GPT2ParallelTransformer(
            num_layers,
            hidden_size,
            num_attention_heads,
            max_sequence_length,
            max_memory_length,
            embedding_dropout_prob,
            attention_dropout_prob,
            output_dropout_prob,
            checkpoint_activations,
            checkpoint_num_layers,
            query_window=query_window,
            key_window_times=key_window_times,
            num_pivot=num_pivot,
            pb_relax_alpha=pb_relax_alpha if pb_relax_attention else None,
        )

    @classmethod
    def from_config(cls, config: GPT2Config) -> "GPT2Model":
        """The model ``config`` describes (same parameters as the keyword constructor)."""
        return cls(**dataclasses.asdict(config))

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        attention_mask,
        txt_indices_bool: Optional[torch.Tensor] = None,
        img_indices_bool: Optional[torch.Tensor] = None,
        is_sparse: int = 0,
        *mems: torch.Tensor,
        kv_cache: Optional[KVCache] = None,
        last_only: bool = False,
        vocab_range: Optional[Tuple[int, int]] = None,
    ):
        """Logits over the (vocab-split unless gathered) vocabulary for the new tokens.

        ``mems``: the original's hidden-state memories (returned updated when
        max_memory_length > 0).  ``kv_cache``: our cache, updated in place;
        then no memories are returned.  For sampling, ``last_only`` keeps the
        last position and ``vocab_range=(lo, hi)`` computes only those logits
        (one model-parallel rank): decoding is bound by reading weights, and the
        58240-row output matrix is the largest one.
        """
        hidden = self.word_embeddings(input_ids)
        out, new_mems = self.transformer(
            hidden, position_ids, attention_mask, txt_indices_bool, img_indices_bool, is_sparse, mems, kv_cache
        )
        if last_only:
            out = out[:, -1:]
        weight = self.word_embeddings.weight
        if vocab_range is not None and mpu.get_model_parallel_world_size() == 1:
            logits = mpu.layers.linear(out, weight[vocab_range[0] : vocab_range[1]])
        elif vocab_range is not None:
            logits = mpu.layers.parallel_lm_logits(out, weight, False)[..., vocab_range[0] : vocab_range[1]]
        else:
            logits = mpu.layers.parallel_lm_logits(out, weight, self.parallel_output)
        return (logits, *new_mems)

    def new_kv_cache(self, capacity: int = 0) -> KVCache:
        """An empty cache with this model's memory window, room for ``capacity`` positions."""
        return KVCache(self.num_layers, self.max_memory_length, capacity)


def gpt2_get_params_for_weight_decay_optimization(module: nn.Module):
    """Two parameter groups: with weight decay, and without (biases and LayerNorms)."""
    decay, no_decay = {"params": []}, {"params": [], "weight_decay": 0.0}
    for sub in module.modules():
        if isinstance(sub, nn.LayerNorm):
            no_decay["params"].extend(p for p in sub._parameters.values() if p is not None)
        else:
            decay["params"].extend(p for n, p in sub._parameters.items() if p is not None and n != "bias")
            no_decay["params"].extend(p for n, p in sub._parameters.items() if p is not None and n == "bias")
    return decay, no_decay
