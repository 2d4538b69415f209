"""Process groups, devices, seeds and model-parallel-aware gradient clipping.

On a machine without a GPU everything runs on CPU with the gloo back end, so the
same command trains on a laptop, on CPU nodes and on GPUs.
"""

from __future__ import annotations

import gc
import os
import random
import re
from typing import Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from arch import mpu
from arch.checkpoint import split_rule


def setup_device(args) -> torch.device:
    """cuda:LOCAL_RANK when training on GPU with several processes, else args.device."""
    if args.device.startswith("cuda") and args.world_size > 1:
        count = torch.cuda.device_count()
        device = torch.device("cuda", args.local_rank % max(1, count))
    else:
        device = torch.device(args.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


def init_distributed(args, device: torch.device) -> None:
    """init_process_group (env://, gloo on CPU) when WORLD_SIZE > 1 or DeepSpeed; mpu groups."""
    needs_group = args.world_size > 1 or args.deepspeed
    if needs_group and not dist.is_initialized():
        backend = args.distributed_backend if device.type == "cuda" else "gloo"
        os.environ.setdefault("MASTER_ADDR", "localhost")
        os.environ.setdefault("MASTER_PORT", "6000")
        os.environ.setdefault("RANK", str(args.rank))
        os.environ.setdefault("WORLD_SIZE", str(args.world_size))
        os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
        dist.init_process_group(backend=backend, init_method="env://", world_size=args.world_size, rank=args.rank)
    if args.world_size % args.model_parallel_size:
        raise ValueError(
            f"world size {args.world_size} is not divisible by --model-parallel-size {args.model_parallel_size}"
        )
    mpu.initialize_model_parallel(args.model_parallel_size)


def end_distributed(every_rank_here: bool) -> None:
    """Tear torch.distributed down before the interpreter does. When every rank ends at the
    same point (a finished run, an agreed stop) they first wait for each other, so no rank
    closes its connections while another still uses them; then the objects that hold the
    groups (the mpu globals, a DeepSpeed engine kept alive by reference cycles) are freed and
    the groups destroyed. A gloo rank torn down at interpreter exit instead can abort with
    "terminate called without an active exception" after a run that finished."""
    if not dist.is_initialized():
        return
    if every_rank_here:
        dist.barrier()
    mpu.destroy_model_parallel()
    gc.collect()
    dist.destroy_process_group()


def set_random_seed(seed: int) -> None:
    """python, numpy, torch and the model-parallel tracker (seed + 2718 + mp rank)."""
    random.seed(seed)
    np.random.seed(seed)
    mpu.model_parallel_manual_seed(seed)


def is_model_parallel_split(name: str) -> bool:
    """True for parameters whose slices differ between model-parallel ranks."""
    return split_rule(name)[0] is not None


def grad_norm_sq(named_params: Iterable[Tuple[str, nn.Parameter]]) -> torch.Tensor:
    """Squared global L2 norm: split grads summed over the mp group, replicated ones once."""
    named_params = [(n, p) for n, p in named_params if p.grad is not None]
    device = named_params[0][1].grad.device if named_params else torch.device("cpu")
    split = torch.zeros((), dtype=torch.float64, device=device)
    replicated = torch.zeros((), dtype=torch.float64, device=device)
    for name, p in named_params:
        sq = p.grad.detach().double().pow(2).sum()
        if is_model_parallel_split(name):
            split += sq
        else:
            replicated += sq
    group = mpu.get_model_parallel_group()
    if group is not None and mpu.get_model_parallel_world_size() > 1:
        dist.all_reduce(split, group=group)
    return split + replicated


def clip_grad_norm(named_params, max_norm: float) -> float:
    """Scale grads by max_norm / (norm + 1e-6) when the norm exceeds max_norm (Megatron rule)."""
    named_params = list(named_params)
    total = float(grad_norm_sq(named_params).sqrt())
    if max_norm > 0:
        coef = max_norm / (total + 1e-6)
        if coef < 1:
            for _, p in named_params:
                if p.grad is not None:
                    p.grad.detach().mul_(coef)
    return total


def all_reduce_mean(values: torch.Tensor, group=None) -> torch.Tensor:
    """Mean over the group (data-parallel ranks); identity in a single process."""
    if not dist.is_initialized():
        return values
    values = values.clone()
    dist.all_reduce(values, group=group)
    return values / dist.get_world_size(group=group)


def any_rank(flags: Sequence[int], device: torch.device) -> List[int]:
    """Element-wise maximum of ``flags`` over every rank (a collective: all ranks call it at the
    same point); identity in a single process. The loop's per-step stop check."""
    if not dist.is_initialized():
        return [int(f) for f in flags]
    values = torch.tensor([int(f) for f in flags], dtype=torch.int64, device=device)
    dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return [int(v) for v in values.tolist()]


def first_message(message: Optional[str]) -> Optional[str]:
    """The first non-empty ``message`` over all ranks, on every rank (a collective), so a
    failure seen by one rank stops all of them with the same words."""
    if not dist.is_initialized():
        return message
    gathered: List[Optional[str]] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, message)
    return next((m for m in gathered if m), None)


def lost_peer_reason(exc: BaseException) -> Optional[str]:
    """The transport's words when ``exc`` is a collective that failed because another rank is
    gone (its process or node stopped), else None: gloo's connection errors, torch's DistError."""
    if not dist.is_initialized() or dist.get_world_size() < 2:
        return None
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, dist.DistError) or (isinstance(exc, RuntimeError) and "gloo/transport" in text):
        text = re.sub(r"^\[[^\]]*\]\s*", "", text)  # gloo's [source file:line] prefix
        return text.split(". ")[0].rstrip(".")
    return None
