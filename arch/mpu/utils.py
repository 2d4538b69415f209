"""Small helpers shared by the parallel layers."""

from __future__ import annotations

from typing import Tuple

import torch


def divide(numerator: int, denominator: int) -> int:
    if numerator % denominator != 0:
        raise ValueError(f"{numerator} is not divisible by {denominator}")
    return numerator // denominator


def split_tensor_along_last_dim(tensor: torch.Tensor, num_partitions: int) -> Tuple[torch.Tensor, ...]:
    size = divide(tensor.size(-1), num_partitions)
    return torch.split(tensor, size, dim=-1)


def vocab_range_for_rank(vocab_size: int, rank: int, world_size: int) -> Tuple[int, int]:
    """[first, last) rows of the vocabulary owned by ``rank``."""
    per = divide(vocab_size, world_size)
    return rank * per, (rank + 1) * per
