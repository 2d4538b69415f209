"""Key/value cache for incremental decoding.

The original sampler feeds back hidden-state memories and recomputes every key
and value of the whole sequence at every step; the cache keeps each layer's
keys and values instead, so a step costs one token's projections.  Buffers are
preallocated and grown by doubling, so appending a token writes one slot
instead of copying the whole cache (a torch.cat per step is quadratic in the
sequence length).  It keeps the original's ``max_memory_length`` window (the
last M positions) so both paths see the same context.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch


class KVCache:
    """Per-layer keys and values, each [batch, local heads, length, head size]."""

    def __init__(self, num_layers: int, max_length: int = 0, capacity: int = 0):
        self.num_layers = num_layers
        self.max_length = max_length  # 0: unbounded
        self.capacity = capacity  # positions to allocate up front (e.g. the query length)
        self._keys: List[Optional[torch.Tensor]] = [None] * num_layers
        self._values: List[Optional[torch.Tensor]] = [None] * num_layers
        self._lengths = [0] * num_layers

    @property
    def length(self) -> int:
        return self._lengths[0]

    @property
    def batch_size(self) -> int:
        return 0 if self._keys[0] is None else self._keys[0].size(0)

    @property
    def keys(self) -> List[Optional[torch.Tensor]]:
        return [None if k is None else k[:, :, :n] for k, n in zip(self._keys, self._lengths)]

    @property
    def values(self) -> List[Optional[torch.Tensor]]:
        return [None if v is None else v[:, :, :n] for v, n in zip(self._values, self._lengths)]

    def _reserve(self, layer: int, like: torch.Tensor, needed: int) -> None:
        buffer = self._keys[layer]
        if buffer is not None and buffer.size(2) >= needed:
            return
        capacity = max(needed, 64, self.capacity, 2 * (0 if buffer is None else buffer.size(2)))
        b, n, _, d = like.shape
        keys = like.new_empty(b, n, capacity, d)
        values = like.new_empty(b, n, capacity, d)
        used = self._lengths[layer]
        if buffer is not None and used:
            keys[:, :, :used] = buffer[:, :, :used]
            values[:, :, :used] = self._values[layer][:, :, :used]
        self._keys[layer], self._values[layer] = keys, values

    def extend(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Append new keys/values of ``layer``; return all keys/values to attend to."""
        start = self._lengths[layer]
        end = start + k.size(2)
        self._reserve(layer, k, end)
        self._keys[layer][:, :, start:end] = k
        self._values[layer][:, :, start:end] = v
        self._lengths[layer] = end
        return self._keys[layer][:, :, :end], self._values[layer][:, :, :end]

    def truncate(self) -> None:
        """Keep the last ``max_length`` positions (after a forward, like update_mems)."""
        if self.max_length <= 0 or self.length <= self.max_length:
            return
        for i in range(self.num_layers):
            n, m = self._lengths[i], self.max_length
            self._keys[i][:, :, :m] = self._keys[i][:, :, n - m : n].clone()
            self._values[i][:, :, :m] = self._values[i][:, :, n - m : n].clone()
            self._lengths[i] = m

    def select(self, index: torch.Tensor) -> "KVCache":
        """Reorder or repeat batch rows (e.g. one prompt row -> many samples), in place."""
        for i in range(self.num_layers):
            if self._keys[i] is not None:
                self._keys[i] = self._keys[i].index_select(0, index)
                self._values[i] = self._values[i].index_select(0, index)
        return self

    @property
    def device(self) -> torch.device:
        return self._keys[0].device if self._keys[0] is not None else torch.device("cpu")
