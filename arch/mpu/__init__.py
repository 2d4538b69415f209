"""Megatron-style model parallelism: process groups, parallel layers, mappings,
vocab-parallel cross entropy and an RNG-aware activation checkpoint.

With no model-parallel group initialised every layer behaves as its plain torch
counterpart, so one code path serves a single CPU process and many GPUs.
"""

from .cross_entropy import vocab_parallel_cross_entropy
from .initialize import (
    destroy_model_parallel,
    get_data_parallel_group,
    get_data_parallel_rank,
    get_data_parallel_world_size,
    get_model_parallel_group,
    get_model_parallel_rank,
    get_model_parallel_src_rank,
    get_model_parallel_world_size,
    initialize_model_parallel,
    model_parallel_is_initialized,
)
from .layers import ColumnParallelLinear, RowParallelLinear, VocabParallelEmbedding
from .mappings import (
    copy_to_model_parallel_region,
    gather_from_model_parallel_region,
    reduce_from_model_parallel_region,
    scatter_to_model_parallel_region,
)
from .random import checkpoint, get_rng_tracker, model_parallel_manual_seed
from .utils import divide, split_tensor_along_last_dim, vocab_range_for_rank

__all__ = [name for name in dir() if not name.startswith("_")]
