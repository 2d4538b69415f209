"""Batch sampler that slices global batches per data-parallel rank and can resume.

The original skipped ``start_iter`` batches only with several data-parallel ranks;
here resuming works for a single process too, so a restarted run sees exactly the
batches it would have seen had it not stopped.
"""

from __future__ import annotations

import itertools
from typing import Iterator, List, Optional

from torch.utils.data import BatchSampler, Sampler


class DistributedBatchSampler(BatchSampler):
    """Cuts each global batch of ``batch_size`` indices into ``world_size`` slices and
    yields this ``rank``'s slice.

    ``start_iter`` (optimizer iterations, each taking ``gradient_accumulation_steps``
    batches) are skipped on the next pass only; later passes start from the beginning.
    """

    def __init__(
        self,
        sampler: Sampler,
        batch_size: int,
        drop_last: bool,
        rank: int = 0,
        world_size: int = 1,
        start_iter: int = 0,
        gradient_accumulation_steps: Optional[int] = None,
    ):
        super().__init__(sampler, batch_size, drop_last)
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world size {world_size}")
        if batch_size % world_size:
            raise ValueError(f"global batch {batch_size} is not divisible by the {world_size} data-parallel ranks")
        self.rank = rank
        self.world_size = world_size
        self.start_iter = int(start_iter)
        self.gradient_accumulation_steps = gradient_accumulation_steps or 1

    @property
    def batches_to_skip(self) -> int:
        return self.start_iter * self.gradient_accumulation_steps

    def __iter__(self) -> Iterator[List[int]]:
        indices = iter(self.sampler)
        skip = self.batches_to_skip % max(1, len(self)) if len(self) else 0
        self.start_iter = 0
        if skip:
            # consume the skipped indices without building their batches
            next(itertools.islice(indices, skip * self.batch_size - 1, None), None)
        while True:
            batch = list(itertools.islice(indices, self.batch_size))
            if not batch or (len(batch) < self.batch_size and self.drop_last):
                return
            yield self._slice(batch)

    def _slice(self, batch: List[int]) -> List[int]:
        start = self.rank * self.batch_size // self.world_size
        end = (self.rank + 1) * self.batch_size // self.world_size
        return batch[start:end]
