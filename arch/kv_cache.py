"""Key/value cache for incremental decoding.

The original sampler feeds back hidden-state memories and recomputes every key
and value of the whole sequence at every step; the cache keeps each layer's
keys and values instead, so a step costs one token's projections.  It keeps
the original's ``max_memory_length`` window (the last M positions) so both
paths see the same context.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch


class KVCache:
    """Per-layer keys and values, each [batch, local heads, length, head size]."""

    def __init__(self, num_layers: int, max_length: int = 0):
        self.num_layers = num_layers
        self.max_length = max_length  # 0: unbounded
        self.keys: List[Optional[torch.Tensor]] = [None] * num_layers
        self.values: List[Optional[torch.Tensor]] = [None] * num_layers

    @property
    def length(self) -> int:
        return 0 if self.keys[0] is None else self.keys[0].size(2)

    @property
    def batch_size(self) -> int:
        return 0 if self.keys[0] is None else self.keys[0].size(0)

    def extend(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Append new keys/values of ``layer``; return all keys/values to attend to."""
        if self.keys[layer] is not None:
            k = torch.cat([self.keys[layer], k], dim=2)
            v = torch.cat([self.values[layer], v], dim=2)
        self.keys[layer], self.values[layer] = k, v
        return k, v

    def truncate(self) -> None:
        """Keep the last ``max_length`` positions (after a forward, like update_mems)."""
        if self.max_length <= 0 or self.length <= self.max_length:
            return
        for i in range(self.num_layers):
            self.keys[i] = self.keys[i][:, :, -self.max_length:]
            self.values[i] = self.values[i][:, :, -self.max_length:]

    def select(self, index: torch.Tensor) -> "KVCache":
        """Reorder or repeat batch rows (e.g. one prompt row -> many samples), in place."""
        for i in range(self.num_layers):
            if self.keys[i] is not None:
                self.keys[i] = self.keys[i].index_select(0, index)
                self.values[i] = self.values[i].index_select(0, index)
        return self
