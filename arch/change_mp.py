"""Split or merge a checkpoint's model-parallel files.

    python -m arch.change_mp SRC DST --model-parallel-size N

SRC is a checkpoint folder in the original layout (tracker file, then
``<iter>/mp_rank_XX_model_states.pt``) with any number of ranks, or one ``.pt`` file; DST receives
the same iteration split into N ranks (N=1 merges).  Only the model weights
(``module``), the iteration and ``model_config.json`` (tokenizer paths still pointing
at the same files) are carried over: optimizer shards are tied to the old split.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import List

from .checkpoint import (
    CheckpointError,
    load_checkpoint_state,
    merge_model_parallel_states,
    model_states_filename,
    read_tracker,
    resolve_checkpoint_file,
    save_checkpoint,
    split_model_parallel_state,
    split_rule,
)
from .model_config import copy_model_config


def load_all_ranks(src: str, trust: bool = False) -> List[dict]:
    """Every ``mp_rank_XX`` state of the tracked iteration of ``src``, in rank order (a single
    ``.pt`` file: its one state)."""
    if os.path.isfile(src):
        return [load_checkpoint_state(src, trust=trust)]
    folder = os.path.dirname(resolve_checkpoint_file(src, 0))  # the tracked iteration ("release": or 0)
    states, rank = [], 0
    while os.path.isfile(os.path.join(folder, model_states_filename(rank))):
        states.append(load_checkpoint_state(os.path.join(folder, model_states_filename(rank)), trust=trust))
        rank += 1
    if not states:
        raise CheckpointError(f"{folder}: holds no {model_states_filename(0)}")
    return states


def check_split(state: dict, model_parallel_size: int, source: str) -> None:
    """ValueError (one line) for a tensor that does not cut into equal slices: the model could not load them."""
    for key, value in state.items():
        dim, stride = split_rule(key)
        if dim is not None and value.size(dim) % (model_parallel_size * stride):
            raise ValueError(
                f"{source}: {key} {tuple(value.shape)} does not split into {model_parallel_size} equal slices; "
                "pick a --model-parallel-size that divides the vocabulary and the attention heads"
            )


def change_model_parallel_size(src: str, dst: str, model_parallel_size: int, trust: bool = False) -> None:
    """Write SRC's weights into DST split into ``model_parallel_size`` parts (1 merges)."""
    if model_parallel_size < 1:
        raise ValueError(f"--model-parallel-size {model_parallel_size} must be at least 1")
    tag, _ = read_tracker(src)
    merged = merge_model_parallel_states(load_all_ranks(src, trust))
    check_split(merged, model_parallel_size, src)
    parts = split_model_parallel_state(merged, model_parallel_size)
    iteration = tag if tag is not None else "0"
    for rank, part in enumerate(parts):
        save_checkpoint(dst, iteration, part, mp_rank=rank, write_tracker=rank == len(parts) - 1)
    copy_model_config(src, dst)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("src", help="checkpoint folder to read")
    parser.add_argument("dst", help="checkpoint folder to write")
    parser.add_argument("--model-parallel-size", type=int, required=True)
    parser.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="allow full unpickling (DeepSpeed RNG entries); trusted files only",
    )
    args = parser.parse_args(argv)
    try:
        change_model_parallel_size(args.src, args.dst, args.model_parallel_size, args.trust_checkpoint)
    except (CheckpointError, ValueError) as exc:
        print(f"change_mp: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
