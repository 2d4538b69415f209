"""Run under torchrun: train with pretrain_gpt2.run, then check the data-parallel replicas.

Rank 0 writes {"losses": [...], "replicas_identical": bool, "max_replica_diff": float}
to the json file named by $TRAIN_WORKER_OUT.  Exit code 0 = trained.
"""

from __future__ import annotations

import json
import os
import sys

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pretrain_gpt2  # noqa: E402
from arch import mpu  # noqa: E402


def main() -> int:
    result = pretrain_gpt2.run(sys.argv[1:])
    module = result.trainer.backend.module
    flat = torch.cat([p.detach().float().reshape(-1).cpu() for p in module.parameters()])
    group = mpu.get_data_parallel_group()
    world = dist.get_world_size(group=group)
    gathered = [torch.empty_like(flat) for _ in range(world)]
    dist.all_gather(gathered, flat, group=group)
    diff = max(float((g - flat).abs().max()) for g in gathered)
    if dist.get_rank() == 0 and os.environ.get("TRAIN_WORKER_OUT"):
        with open(os.environ["TRAIN_WORKER_OUT"], "w") as f:
            json.dump(
                {
                    "losses": result.state.losses,
                    "replicas_identical": diff == 0.0,
                    "max_replica_diff": diff,
                    "dp_world": world,
                },
                f,
            )
    dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
