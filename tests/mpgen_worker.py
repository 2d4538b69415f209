"""Run generate_samples.main once per task, in float64, recording every sampled token.

    python tests/mpgen_worker.py OUT ARGV... [--next ARGV...]
    torchrun --nproc_per_node 2 tests/mpgen_worker.py OUT ARGV... [--next ARGV...]

Writes ``OUT.rank<R>.json``: {"codes": main's exit code per task, "tokens": the rows of each
Generator.sample call}. Under torchrun the gloo group is started here, once, so that the
tasks of one launch share it (main leaves a group it did not start alone). The model runs
in float64: the slices' sums then agree with the whole model's to far below the gaps
between sampled candidates, so equal tokens are what a correct split must give.
"""

from __future__ import annotations

import json
import os
import sys

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common.dtypes import DTYPES  # noqa: E402

DTYPES["float32"] = torch.float64  # the weights' dtype without --fp16 / --bf16, in this process only

import generate_samples  # noqa: E402
from generation.generator import Generator  # noqa: E402


def main(argv) -> int:
    out, rest = argv[0], argv[1:]
    tasks, current = [], []
    for arg in rest:
        if arg == "--next":
            tasks.append(current)
            current = []
        else:
            current.append(arg)
    tasks.append(current)
    tokens = []
    real = Generator.sample

    def sample(self, *args, **kwargs):
        seqs = real(self, *args, **kwargs)
        tokens.append(seqs.tolist())
        return seqs

    Generator.sample = sample
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group("gloo")
    codes = [generate_samples.main(task) for task in tasks]
    rank = int(os.environ.get("RANK", "0"))
    with open(f"{out}.rank{rank}.json", "w") as f:
        json.dump({"codes": codes, "tokens": tokens}, f)
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
