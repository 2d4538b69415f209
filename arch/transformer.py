"""The CogView transformer: Sandwich-LN layers with PB-relax LayerNorms.

Layer i:  a = LN_in(x);  x = x + LN_3(Attention(a));  x = x + LN_4(MLP(LN_post(x))).
Memories (the original's incremental path) and a key/value cache (ours) are
two ways to run on new tokens after old ones; both give the same logits.
"""

from __future__ import annotations

import math
from typing import Callable, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from . import mpu
from .attention import dense_attention, sample_training_pivots, sparse_attention_inference, sparse_attention_train
from .kv_cache import KVCache
from .layernorm import PBRelaxLayerNorm
from .masks import AttentionMask, build_attention_mask


def init_method_normal(std: float) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda tensor: nn.init.normal_(tensor, mean=0.0, std=std)


def scaled_init_method(std: float, num_layers: int) -> Callable[[torch.Tensor], torch.Tensor]:
    return init_method_normal(std / math.sqrt(2.0 * num_layers))


def gelu(x: torch.Tensor) -> torch.Tensor:
    """The tanh form of GELU the original checkpoints were trained with (erf GELU differs ~1e-3)."""
    return F.gelu(x, approximate="tanh")


class SparseConfig:
    """Everything the sparse kernels need besides q, k, v."""

    def __init__(self, query_window: int, key_window_times: int, num_pivot: int, max_sequence_length: int):
        self.query_window = query_window
        self.key_window_times = key_window_times
        self.num_pivot = num_pivot
        self.max_sequence_length = max_sequence_length


class GPT2ParallelSelfAttention(nn.Module):
    """Multi-head self attention with a stride-3 column-parallel qkv and a row-parallel output."""

    def __init__(
        self,
        hidden_size: int,
        num_attention_heads: int,
        attention_dropout_prob: float,
        output_dropout_prob: float,
        init_method,
        output_layer_init_method,
        pb_relax_alpha: Optional[float] = None,
    ):
        super().__init__()
        world = mpu.get_model_parallel_world_size()
        self.hidden_size_per_partition = mpu.divide(hidden_size, world)
        self.hidden_size_per_attention_head = mpu.divide(hidden_size, num_attention_heads)
        self.num_attention_heads_per_partition = mpu.divide(num_attention_heads, world)
        self.query_key_value = mpu.ColumnParallelLinear(
            hidden_size, 3 * hidden_size, stride=3, gather_output=False, init_method=init_method
        )
        self.dense = mpu.RowParallelLinear(
            hidden_size, hidden_size, input_is_parallel=True, init_method=output_layer_init_method
        )
        self.attention_dropout_prob = attention_dropout_prob
        self.output_dropout = nn.Dropout(output_dropout_prob)
        self.pb_relax_alpha = pb_relax_alpha

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, s, _ = x.shape
        return x.view(b, s, self.num_attention_heads_per_partition, self.hidden_size_per_attention_head).transpose(1, 2)

    def forward(
        self,
        hidden: torch.Tensor,
        mask: AttentionMask,
        mem: Optional[torch.Tensor] = None,
        cache: Optional[KVCache] = None,
        layer_index: int = 0,
        is_sparse: int = 0,
        sparse: Optional[SparseConfig] = None,
        pivots: Optional[torch.Tensor] = None,
        txt_indices_bool: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        q_len = hidden.size(1)
        full = hidden if mem is None else torch.cat([mem, hidden], dim=1)
        q, k, v = mpu.split_tensor_along_last_dim(self.query_key_value(full), 3)
        q, k, v = self._heads(q[:, -q_len:]), self._heads(k), self._heads(v)
        if cache is not None:
            k, v = cache.extend(layer_index, k, v)
        dropout_p = self.attention_dropout_prob if self.training else 0.0
        with mpu.get_rng_tracker().fork(hidden.device):
            if is_sparse == 1:
                if k.size(2) != q_len:
                    raise ValueError("sparse training attention (is_sparse=1) cannot use memories")
                context = sparse_attention_train(
                    q, k, v, pivots, sparse.query_window, sparse.key_window_times, dropout_p
                )
            elif is_sparse == 2:
                context = sparse_attention_inference(
                    q,
                    k,
                    v,
                    txt_indices_bool,
                    sparse.query_window,
                    sparse.key_window_times,
                    sparse.num_pivot,
                    sparse.max_sequence_length,
                )
            else:
                context = dense_attention(q, k, v, mask, dropout_p, self.pb_relax_alpha)
        b = context.size(0)
        context = context.transpose(1, 2).reshape(b, q_len, self.hidden_size_per_partition)
        return self.output_dropout(self.dense(context))


class GPT2ParallelMLP(nn.Module):
    def __init__(self, hidden_size: int, output_dropout_prob: float, init_method, output_layer_init_method):
        super().__init__()
        self.dense_h_to_4h = mpu.ColumnParallelLinear(
            hidden_size, 4 * hidden_size, gather_output=False, init_method=init_method
        )
        self.dense_4h_to_h = mpu.RowParallelLinear(
            4 * hidden_size, hidden_size, input_is_parallel=True, init_method=output_layer_init_method
        )
        self.dropout = nn.Dropout(output_dropout_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.dense_4h_to_h(gelu(self.dense_h_to_4h(x))))


class GPT2ParallelTransformerLayer(nn.Module):
    """One Sandwich-LN block (four LayerNorms per layer, as in the checkpoints)."""

    def __init__(
        self,
        hidden_size: int,
        num_attention_heads: int,
        attention_dropout_prob: float,
        output_dropout_prob: float,
        layernorm_epsilon: float,
        init_method,
        output_layer_init_method,
        pb_relax_alpha: Optional[float] = None,
    ):
        super().__init__()
        self.input_layernorm = PBRelaxLayerNorm(hidden_size, eps=layernorm_epsilon)
        self.attention = GPT2ParallelSelfAttention(
            hidden_size,
            num_attention_heads,
            attention_dropout_prob,
            output_dropout_prob,
            init_method,
            output_layer_init_method,
            pb_relax_alpha,
        )
        self.post_attention_layernorm = PBRelaxLayerNorm(hidden_size, eps=layernorm_epsilon)
        self.third_layernorm = PBRelaxLayerNorm(hidden_size, eps=layernorm_epsilon)
        self.fourth_layernorm = PBRelaxLayerNorm(hidden_size, eps=layernorm_epsilon)
        self.mlp = GPT2ParallelMLP(hidden_size, output_dropout_prob, init_method, output_layer_init_method)

    def forward(
        self, x: torch.Tensor, mask: AttentionMask, mem: Optional[torch.Tensor] = None, **attention_kwargs
    ) -> torch.Tensor:
        normed_mem = self.input_layernorm(mem) if mem is not None else None
        attn = self.attention(self.input_layernorm(x), mask, normed_mem, **attention_kwargs)
        x = x + self.third_layernorm(attn)
        return x + self.fourth_layernorm(self.mlp(self.post_attention_layernorm(x)))


class GPT2ParallelTransformer(nn.Module):
    """Position embeddings, the layers, the final LayerNorm, memories and sparsity."""

    def __init__(
        self,
        num_layers: int,
        hidden_size: int,
        num_attention_heads: int,
        max_sequence_length: int,
        max_memory_length: int,
        embedding_dropout_prob: float,
        attention_dropout_prob: float,
        output_dropout_prob: float,
        checkpoint_activations: bool,
        checkpoint_num_layers: int = 1,
        layernorm_epsilon: float = 1.0e-5,
        init_method_std: float = 0.02,
        use_scaled_init_for_output_weights: bool = True,
        query_window: int = 128,
        key_window_times: int = 6,
        num_pivot: int = 768,
        pb_relax_alpha: Optional[float] = None,
    ):
        super().__init__()
        self.max_memory_length = max_memory_length
        self.checkpoint_activations = checkpoint_activations
        self.checkpoint_num_layers = checkpoint_num_layers
        self.sparse = SparseConfig(query_window, key_window_times, num_pivot, max_sequence_length)
        output_init = (
            scaled_init_method(init_method_std, num_layers)
            if use_scaled_init_for_output_weights
            else init_method_normal(init_method_std)
        )
        self.position_embeddings = nn.Embedding(max_sequence_length, hidden_size)
        init_method_normal(init_method_std)(self.position_embeddings.weight)
        self.embedding_dropout = nn.Dropout(embedding_dropout_prob)
        self.layers = nn.ModuleList(
            [
                GPT2ParallelTransformerLayer(
                    hidden_size,
                    num_attention_heads,
                    attention_dropout_prob,
                    output_dropout_prob,
                    layernorm_epsilon,
                    init_method_normal(init_method_std),
                    output_init,
                    pb_relax_alpha,
                )
                for _ in range(num_layers)
            ]
        )
        self.final_layernorm = PBRelaxLayerNorm(hidden_size, eps=layernorm_epsilon)
        self.last_pivots: List[torch.Tensor] = []  # pivots of the last sparse-training forward

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_ids: torch.Tensor,
        attention_mask,
        txt_indices_bool: Optional[torch.Tensor] = None,
        img_indices_bool: Optional[torch.Tensor] = None,
        is_sparse: int = 0,
        mems: Sequence[torch.Tensor] = (),
        kv_cache: Optional[KVCache] = None,
    ):
        q_len = hidden_states.size(1)
        if mems and kv_cache is not None:
            raise ValueError("pass either memories or a KV cache, not both")
        memory_length = mems[0].size(1) if mems else (kv_cache.length if kv_cache is not None else 0)
        mask = build_attention_mask(attention_mask, q_len, memory_length)
        x = self.embedding_dropout(hidden_states + self.position_embeddings(position_ids))
        keep_memories = self.max_memory_length > 0 and kv_cache is None
        outputs = [x.detach()] if keep_memories else []
        if is_sparse == 1 and not self.checkpoint_activations:
            raise ValueError("sparse training attention (is_sparse=1) needs checkpoint_activations")
        if is_sparse == 2 and txt_indices_bool is None:
            raise ValueError("sparse inference attention (is_sparse=2) needs txt_indices_bool")
        self.last_pivots = []
        use_checkpoint = self.checkpoint_activations and torch.is_grad_enabled() and not mems and kv_cache is None
        step = self.checkpoint_num_layers if (self.checkpoint_activations or is_sparse == 1) else len(self.layers)
        for start in range(0, len(self.layers), max(1, step)):
            end = min(start + max(1, step), len(self.layers))
            kwargs = dict(is_sparse=is_sparse, sparse=self.sparse, txt_indices_bool=txt_indices_bool)
            if is_sparse == 1:
                pivots = sample_training_pivots(txt_indices_bool, img_indices_bool, self.sparse.num_pivot)
                self.last_pivots.append(pivots)
                kwargs["pivots"] = pivots
            if use_checkpoint:
                chunk = self._chunk_function(start, end, mask, kwargs)
                chunk_outputs = mpu.checkpoint(chunk, x)
                chunk_outputs = chunk_outputs if isinstance(chunk_outputs, tuple) else (chunk_outputs,)
            else:
                chunk_outputs = []
                for i in range(start, end):
                    x = self.layers[i](x, mask, mems[i] if mems else None, cache=kv_cache, layer_index=i, **kwargs)
                    chunk_outputs.append(x)
            x = chunk_outputs[-1]
            if keep_memories:
                outputs.extend(o.detach() for o in chunk_outputs)
        if kv_cache is not None:
            kv_cache.truncate()
        result = self.final_layernorm(x)
        if not keep_memories:
            return result, []
        return result, self.update_mems(outputs, mems)

    def _chunk_function(self, start: int, end: int, mask: AttentionMask, kwargs):
        def run(x: torch.Tensor):
            outs = []
            for i in range(start, end):
                x = self.layers[i](x, mask, None, layer_index=i, **kwargs)
                outs.append(x)
            return tuple(outs)

        return run

    def update_mems(self, hiddens: List[torch.Tensor], mems: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        """Append the new hidden states and keep the last max_memory_length positions."""
        new_len = hiddens[0].size(1) + (mems[0].size(1) if mems else 0)
        keep = min(self.max_memory_length, new_len)
        if not mems:
            return [h[:, -keep:] for h in hiddens]
        return [torch.cat([m, h], dim=1)[:, -keep:] for m, h in zip(mems, hiddens)]
