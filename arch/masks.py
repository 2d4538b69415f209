"""Attention masks: the original's float [1, 1, q, k] tensor and its int "sep" form.

Both are normalised here into one small description (``AttentionMask``) so the
attention kernels can pick the fastest exact path: no mask, ``is_causal``, or an
additive mask where masked scores become -10000 (the original's constant).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple, Union

import torch

MASK_VALUE = -10000.0

MaskLike = Union[int, torch.Tensor, None]


@dataclass
class AttentionMask:
    """Which of ``k`` keys each of ``q`` queries sees (the last q keys are the queries).

    kind is "full" (everything visible), "causal" (prefix of ``visible_prefix``
    keys fully visible, then causal) or "tensor" (explicit 0/1 ``tensor`` [.., q, k]).
    """

    kind: str
    query_length: int
    key_length: int
    visible_prefix: int = 0
    tensor: Optional[torch.Tensor] = None

    @property
    def memory_length(self) -> int:
        return self.key_length - self.query_length

    def dense(self, device: torch.device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The 0/1 mask as [1, 1, q, k] (or the tensor's own leading dims)."""
        if self.kind == "tensor":
            return self.tensor.to(device=device, dtype=dtype)
        q, k = self.query_length, self.key_length
        if self.kind == "full":
            return torch.ones(1, 1, q, k, device=device, dtype=dtype)
        mask = torch.ones(q, k, device=device, dtype=dtype).tril_(diagonal=k - q)
        mask[:, : self.visible_prefix] = 1
        return mask.view(1, 1, q, k)

    def sdpa_args(self, device: torch.device, dtype: torch.dtype) -> Tuple[Optional[torch.Tensor], bool]:
        """(attn_mask, is_causal) for ``scaled_dot_product_attention``."""
        if self.kind == "full":
            return None, False
        if self.kind == "causal" and self.query_length == self.key_length and self.visible_prefix <= 1:
            return None, True
        return additive(self.dense(device, dtype)), False


def additive(mask01: torch.Tensor) -> torch.Tensor:
    """0/1 mask -> 0 where visible, -10000 where masked."""
    return (1.0 - mask01) * MASK_VALUE


def build_attention_mask(attention_mask: MaskLike, query_length: int, memory_length: int) -> AttentionMask:
    """Normalise the forward's ``attention_mask`` argument.

    An int ``sep`` (or one-element tensor): memory fully visible, the first
    ``sep`` queries form a bidirectional prefix, the rest is causal.  A tensor
    [.., q, q] given with a memory gets the memory columns visible; a tensor
    [.., q, q + memory] is used as is.
    """
    q, k = query_length, query_length + memory_length
    if attention_mask is None:
        attention_mask = 0
    if not isinstance(attention_mask, torch.Tensor) and not isinstance(attention_mask, int):
        attention_mask = torch.as_tensor(attention_mask)  # numpy scalars and arrays
    if isinstance(attention_mask, torch.Tensor) and attention_mask.numel() == 1:
        attention_mask = int(attention_mask.item())
    if isinstance(attention_mask, int):
        prefix = min(k, attention_mask + memory_length)
        if q == 1 or prefix >= k:
            return AttentionMask("full", q, k)
        return AttentionMask("causal", q, k, visible_prefix=prefix)
    mask = attention_mask
    if mask.size(-1) == q and memory_length > 0:
        ones = torch.ones(*mask.shape[:-1], memory_length, dtype=mask.dtype, device=mask.device)
        mask = torch.cat([ones, mask], dim=-1)
    if mask.size(-1) != k or mask.size(-2) != q:
        raise ValueError(f"attention mask of shape {tuple(attention_mask.shape)} does not fit {q} queries and {k} keys")
    reference = torch.ones(q, k, dtype=mask.dtype, device=mask.device).tril_(diagonal=k - q)
    if mask.dim() == 4 and mask.size(0) == 1 and mask.size(1) == 1 and torch.equal(mask[0, 0], reference):
        return AttentionMask("causal", q, k, visible_prefix=memory_length)
    if bool((mask == 1).all()):
        return AttentionMask("full", q, k)
    return AttentionMask("tensor", q, k, tensor=mask)
