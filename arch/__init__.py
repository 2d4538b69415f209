"""CogView's model: the GPT, its attention, model-parallel layers and checkpoints.

Importing this package never imports DeepSpeed and needs no GPU.
"""

from .checkpoint import (
    CheckpointError,
    load_checkpoint_state,
    merge_model_parallel_states,
    read_tracker,
    save_checkpoint,
    split_model_parallel_state,
)
from .config import GPT2Config
from .kv_cache import KVCache
from .model import GPT2Model, gpt2_get_params_for_weight_decay_optimization

__all__ = [
    "CheckpointError",
    "GPT2Config",
    "GPT2Model",
    "KVCache",
    "gpt2_get_params_for_weight_decay_optimization",
    "load_checkpoint_state",
    "merge_model_parallel_states",
    "read_tracker",
    "save_checkpoint",
    "split_model_parallel_state",
]
