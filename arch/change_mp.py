"""Split or merge a checkpoint's model-parallel files.

    python -m arch.change_mp SRC DST --model-parallel-size N

SRC is a checkpoint folder in the original layout (tracker file, then
``<iter>/mp_rank_XX_model_states.pt``) with any number of ranks; DST receives
the same iteration split into N ranks (N=1 merges).  Only the model weights
(``module``) and the iteration are carried over: optimizer shards are tied to
the old split.
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
    save_checkpoint,
    split_model_parallel_state,
)


def load_all_ranks(src: str, trust: bool = False) -> List[dict]:
    """Every ``mp_rank_XX`` state of the tracked iteration of ``src``, in rank order."""
    tag, _ = read_tracker(src)
    folder = os.path.join(src, tag) if tag is not None else src
    if not os.path.isdir(folder):
        raise CheckpointError(f"{src}: no checkpoint folder {folder}")
    states, rank = [], 0
    while os.path.isfile(os.path.join(folder, model_states_filename(rank))):
        states.append(load_checkpoint_state(os.path.join(folder, model_states_filename(rank)), trust=trust))
        rank += 1
    if not states:
        raise CheckpointError(f"{folder}: holds no {model_states_filename(0)}")
    return states


def change_model_parallel_size(src: str, dst: str, model_parallel_size: int, trust: bool = False) -> None:
    tag, _ = read_tracker(src)
    merged = merge_model_parallel_states(load_all_ranks(src, trust))
    parts = split_model_parallel_state(merged, model_parallel_size)
    iteration = tag if tag is not None else "0"
    for rank, part in enumerate(parts):
        save_checkpoint(dst, iteration, part, mp_rank=rank, write_tracker=rank == len(parts) - 1)


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
