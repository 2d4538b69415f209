"""Autograd-aware communication between model-parallel ranks (identity for one rank)."""

from __future__ import annotations

import torch
import torch.distributed as dist

from .initialize import get_model_parallel_group, get_model_parallel_rank, get_model_parallel_world_size
from .utils import split_tensor_along_last_dim


def _reduce(x: torch.Tensor) -> torch.Tensor:
    if get_model_parallel_world_size() == 1:
        return x
    x = x.clone()
    dist.all_reduce(x, group=get_model_parallel_group())
    return x


def _split(x: torch.Tensor) -> torch.Tensor:
    world = get_model_parallel_world_size()
    if world == 1:
        return x
    return split_tensor_along_last_dim(x, world)[get_model_parallel_rank()].contiguous()


def _gather(x: torch.Tensor) -> torch.Tensor:
    world = get_model_parallel_world_size()
    if world == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x.contiguous(), group=get_model_parallel_group())
    return torch.cat(parts, dim=-1)


class _Copy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x

    @staticmethod
    def backward(ctx, grad):
        return _reduce(grad)


class _Reduce(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return _reduce(x)

    @staticmethod
    def backward(ctx, grad):
        return grad


class _Scatter(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return _split(x)

    @staticmethod
    def backward(ctx, grad):
        return _gather(grad)


class _Gather(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return _gather(x)

    @staticmethod
    def backward(ctx, grad):
        return _split(grad)


def copy_to_model_parallel_region(x: torch.Tensor) -> torch.Tensor:
    """Identity forward, all-reduce of the gradient."""
    return x if get_model_parallel_world_size() == 1 else _Copy.apply(x)


def reduce_from_model_parallel_region(x: torch.Tensor) -> torch.Tensor:
    """All-reduce forward, identity backward."""
    return x if get_model_parallel_world_size() == 1 else _Reduce.apply(x)


def scatter_to_model_parallel_region(x: torch.Tensor) -> torch.Tensor:
    """Keep this rank's slice of the last dim; gather in backward."""
    return x if get_model_parallel_world_size() == 1 else _Scatter.apply(x)


def gather_from_model_parallel_region(x: torch.Tensor) -> torch.Tensor:
    """Concatenate the ranks' slices along the last dim; split in backward."""
    return x if get_model_parallel_world_size() == 1 else _Gather.apply(x)
