"""Model-parallel generation: one process per slice of the model, all sampling the same tokens.

``torchrun --standalone --nproc_per_node N generate_samples.py --model-parallel-size N ...``
(the scripts do this for ``MPSIZE=N``) starts N processes. Each builds its slice of the GPT
(arch.mpu's parallel layers) and loads its own ``mp_rank_XX_model_states.pt``, so a model
too large for one GPU runs on several. The logits are gathered over the slices, every
process draws from the same seeded generator, and the drawn ids are broadcast from the
model's first process, so every slice feeds the same tokens on and the samples are those
of one process with the merged checkpoint. That first process alone writes and prints.
"""

from __future__ import annotations

import os
import re
from typing import List, Optional, Tuple

import torch
import torch.distributed as dist

from arch import CheckpointError, mpu
from arch.checkpoint import model_states_filename, resolve_checkpoint_file

_PART = re.compile(r"^mp_rank_(\d+)_model_states\.pt$")


class LaunchError(ValueError):
    """A run that cannot start as launched: too few processes, or the keyboard as input
    (exit code 2, like a bad flag)."""


def launch_error(model_parallel_size: int, world_size: int) -> Optional[str]:
    """Why --model-parallel-size cannot run in the processes launched (WORLD_SIZE), else None."""
    n = model_parallel_size
    if n < 1:
        return f"--model-parallel-size {n} must be at least 1"
    if n > 1 and world_size == 1:
        return (
            f"--model-parallel-size {n} runs one process per slice of the model and this is a single process "
            f"(no WORLD_SIZE): launch {n} with torchrun --standalone --nproc_per_node {n} generate_samples.py ... "
            f"(the generation scripts do it for MPSIZE={n})"
        )
    if world_size % n:
        return (
            f"--model-parallel-size {n} with WORLD_SIZE {world_size}: the processes must be a multiple of "
            f"{n}, one per slice of each model (torchrun --nproc_per_node {n})"
        )
    return None


def process_device(device: str, local_rank: int, world_size: int) -> str:
    """GPU LOCAL_RANK for one of several processes on GPUs (as training places them; pick the
    GPUs with CUDA_VISIBLE_DEVICES), else ``device`` unchanged."""
    if world_size > 1 and device.startswith("cuda"):
        return f"cuda:{local_rank % max(1, torch.cuda.device_count())}"
    return device


def start_process_group(device: str) -> bool:
    """torch.distributed over the processes torchrun started (NCCL on GPUs, gloo on CPU);
    False when one was already started by the caller (who then also ends it)."""
    if dist.is_initialized():
        return False
    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
    dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return True


def start_model_parallel(model_parallel_size: int) -> None:
    """arch.mpu's groups (consecutive ranks hold one model); kept when already of this size."""
    if mpu.model_parallel_is_initialized() and mpu.get_model_parallel_world_size() == model_parallel_size:
        return
    mpu.initialize_model_parallel(model_parallel_size)


def end(started: bool) -> None:
    """Undo start_model_parallel, and start_process_group when it ``started`` the group."""
    mpu.destroy_model_parallel()
    if started and dist.is_initialized():
        dist.destroy_process_group()


def agree(message: Optional[str], code: int) -> Tuple[Optional[str], int]:
    """The first failure of any process (message, exit code), on every process (a collective):
    a checkpoint part only one process reads can stop all of them with one line."""
    if not dist.is_initialized():
        return message, code
    gathered: List[Optional[Tuple[str, int]]] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, (message, code) if message else None)
    return next((m for m in gathered if m), (None, code))


def first_process() -> bool:
    """True for the process that speaks for all (rank 0, or any process outside a group)."""
    return not dist.is_initialized() or dist.get_rank() == 0


def barrier() -> None:
    """Wait for every process (so none exits before the first has printed)."""
    if dist.is_initialized():
        dist.barrier()


def same_on_every_slice(ids: torch.Tensor) -> torch.Tensor:
    """``ids`` as the model's first process drew them: its slices compute the same logits up to
    the order of the all-reduces' sums, and a token drawn differently would set them apart."""
    if mpu.get_model_parallel_world_size() == 1:
        return ids
    ids = ids.contiguous()
    dist.broadcast(ids, mpu.get_model_parallel_src_rank(), group=mpu.get_model_parallel_group())
    return ids


def check_checkpoint_parts(load: str, model_parallel_size: int) -> None:
    """The checkpoint must hold exactly ``mp_rank_00`` .. ``mp_rank_{N-1}``, one file per slice;
    CheckpointError (one line, with the change_mp command) otherwise."""
    n = model_parallel_size
    if os.path.isfile(load):
        if n > 1:
            raise CheckpointError(
                f"--load {load} names one file, and --model-parallel-size {n} loads one file per slice: "
                f"point --load at the checkpoint folder holding {_names(n)}"
            )
        return
    folder = os.path.dirname(resolve_checkpoint_file(load, 0))
    parts = sorted(int(m.group(1)) for m in map(_PART.match, os.listdir(folder)) if m)
    if parts == list(range(n)):
        return
    if parts != list(range(len(parts))):
        missing = sorted(set(range(max(parts) + 1)) - set(parts))
        raise CheckpointError(
            f"{folder}: {model_states_filename(missing[0])} is missing beside the other model-parallel "
            "parts; copy the whole checkpoint folder"
        )
    dst = f"{load.rstrip(os.sep)}-mp{n}"
    other = f", or run with --model-parallel-size {len(parts)}" if len(parts) > 1 else ""
    raise CheckpointError(
        f"{folder} holds the model in {len(parts)} model-parallel part(s) ({_names(len(parts))}), not the {n} "
        f"of --model-parallel-size {n}: {'merge' if n == 1 else 'split'} it with python -m arch.change_mp {load} {dst} "
        f"--model-parallel-size {n}, then point --load (CHECKPOINT_PATH in the scripts) at {dst}{other}"
    )


def _names(count: int) -> str:
    first = model_states_filename(0)
    return first if count == 1 else f"{first} .. {model_states_filename(count - 1)}"


def check_model_split(num_attention_heads: int, vocab_size: int, model_parallel_size: int) -> None:
    """Heads and vocabulary rows are cut into equal slices: ValueError (one line) when they cannot be."""
    n = model_parallel_size
    for what, count in (("attention heads", num_attention_heads), ("vocabulary rows (padded)", vocab_size)):
        if count % n:
            raise ValueError(
                f"--model-parallel-size {n}: the model's {count} {what} do not split into {n} equal slices; "
                f"use a size that divides both {num_attention_heads} and {vocab_size}"
            )
