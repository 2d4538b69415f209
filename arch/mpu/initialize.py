"""Model-parallel and data-parallel process groups.

For world size W and model-parallel size p, model-parallel groups are the
consecutive ranks {0..p-1}, {p..2p-1}, ...; data-parallel groups are the ranks
with equal ``rank % p`` (as in the original mpu).  When nothing is initialised
the model-parallel world is a single process.
"""

from __future__ import annotations

from typing import Optional

import torch.distributed as dist

_MODEL_PARALLEL_GROUP: Optional[dist.ProcessGroup] = None
_DATA_PARALLEL_GROUP: Optional[dist.ProcessGroup] = None
_MODEL_PARALLEL_SIZE = 1


def initialize_model_parallel(model_parallel_size: int) -> None:
    """Create the groups; every rank of the default group must call this."""
    global _MODEL_PARALLEL_GROUP, _DATA_PARALLEL_GROUP, _MODEL_PARALLEL_SIZE
    if not dist.is_initialized():
        if model_parallel_size != 1:
            raise RuntimeError("model parallelism needs torch.distributed to be initialised")
        _MODEL_PARALLEL_SIZE = 1
        return
    world_size = dist.get_world_size()
    size = min(model_parallel_size, world_size)
    if world_size % size != 0:
        raise ValueError(f"world size {world_size} is not divisible by model-parallel size {size}")
    rank = dist.get_rank()
    for i in range(size):  # data-parallel groups: same rank % size
        group = dist.new_group(list(range(i, world_size, size)))
        if i == rank % size:
            _DATA_PARALLEL_GROUP = group
    for i in range(world_size // size):  # model-parallel groups: consecutive ranks
        group = dist.new_group(list(range(i * size, (i + 1) * size)))
        if i == rank // size:
            _MODEL_PARALLEL_GROUP = group
    _MODEL_PARALLEL_SIZE = size


def model_parallel_is_initialized() -> bool:
    return _MODEL_PARALLEL_GROUP is not None


def destroy_model_parallel() -> None:
    global _MODEL_PARALLEL_GROUP, _DATA_PARALLEL_GROUP, _MODEL_PARALLEL_SIZE
    _MODEL_PARALLEL_GROUP = None
    _DATA_PARALLEL_GROUP = None
    _MODEL_PARALLEL_SIZE = 1


def get_model_parallel_group() -> Optional[dist.ProcessGroup]:
    return _MODEL_PARALLEL_GROUP


def get_data_parallel_group() -> Optional[dist.ProcessGroup]:
    return _DATA_PARALLEL_GROUP


def get_model_parallel_world_size() -> int:
    if _MODEL_PARALLEL_GROUP is None:
        return 1
    return dist.get_world_size(group=_MODEL_PARALLEL_GROUP)


def get_model_parallel_rank() -> int:
    if _MODEL_PARALLEL_GROUP is None:
        return 0
    return dist.get_rank(group=_MODEL_PARALLEL_GROUP)


def get_model_parallel_src_rank() -> int:
    """Global rank of the first process of this model-parallel group."""
    if _MODEL_PARALLEL_GROUP is None:
        return dist.get_rank() if dist.is_initialized() else 0
    world = get_model_parallel_world_size()
    return (dist.get_rank() // world) * world


def get_data_parallel_world_size() -> int:
    if _DATA_PARALLEL_GROUP is None:
        return dist.get_world_size() if dist.is_initialized() else 1
    return dist.get_world_size(group=_DATA_PARALLEL_GROUP)


def get_data_parallel_rank() -> int:
    if _DATA_PARALLEL_GROUP is None:
        return dist.get_rank() if dist.is_initialized() else 0
    return dist.get_rank(group=_DATA_PARALLEL_GROUP)
